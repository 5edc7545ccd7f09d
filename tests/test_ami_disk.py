"""The disk of `type: ami` from a root folder, with no loop device and no mount: owners,
modes and layout as the image had them, whether the build runs as root or not.

Runs the real tools (sfdisk, mkfs.vfat, mcopy, mke2fs, debugfs) on a small tar made here,
and reads the result back with debugfs and sfdisk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from builder.ami import disk, layout

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in (*disk.TOOLS, "setpriv")),
    reason="the disk tools are not installed (scripts/test-env)")

REPO = Path(__file__).resolve().parent.parent


def image_tar(path: Path) -> None:
    """A tiny root file system with owners and modes worth keeping."""
    def add(archive, name, *, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, data=b"",
            link=""):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1700000000
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w") as archive:
        add(archive, ".", kind=tarfile.DIRTYPE, mode=0o755)
        for folder in ("etc", "usr", "usr/bin", "boot", "home"):
            add(archive, folder, kind=tarfile.DIRTYPE, mode=0o755)
        add(archive, "etc/shadow", mode=0o640, gid=42, data=b"root:*:1::::::\n")
        add(archive, "etc/unreadable", mode=0o000, data=b"secret\n")
        add(archive, "usr/bin/sudo", mode=0o4755, data=b"\x7fELF")
        add(archive, "bin", kind=tarfile.SYMTYPE, mode=0o777, link="usr/bin")
        add(archive, "home/app", kind=tarfile.DIRTYPE, mode=0o700, uid=999, gid=999)
        add(archive, "home/app/notes", mode=0o600, uid=999, gid=999, data=b"hi\n")
        add(archive, "srv", kind=tarfile.DIRTYPE, mode=0o555)  # no write permission
        add(archive, "srv/ro", mode=0o444, data=b"read-only\n")
        add(archive, "dev", kind=tarfile.DIRTYPE, mode=0o755)
        add(archive, "dev/null", kind=tarfile.CHRTYPE, mode=0o666)
        add(archive, ".dockerenv", mode=0o755)


ASSEMBLE = """
import json, os, sys
from builder.ami import disk, layout
tar, work, out = sys.argv[1:4]
root = os.path.join(work, "root"); os.makedirs(root)
with open(tar, "rb") as f:
    owners = disk.extract_rootfs(iter(lambda: f.read(65536), b""), root)
boot = disk.BootFiles(*(os.path.join(work, n) for n in ("loader.efi", "vmlinuz", "initrd")))
for path in (boot.loader, boot.kernel, boot.initrd):
    open(path, "wb").write(b"boot file " + path.encode())
plan = layout.plan_disk(1 << 20, boot.size, seed="t")
disk.configure_rootfs(root, unit="[Unit]\\n", hostname="t", disk=plan)
disk.assemble(out, root, boot, plan, work=work, owners=owners)
print(json.dumps({"root_start": plan.root_start, "esp_start": plan.esp_start,
                  "size": plan.size}))
"""


@pytest.fixture
def scratch():
    """A folder that another user may write to too (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="slipway-ami-disk-", dir="/var/tmp"))
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def assemble(tmp_path: Path, *, as_user: str | None) -> tuple[Path, dict]:
    tar = tmp_path / "image.tar"
    image_tar(tar)
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    out = work / "disk.raw"
    command = [sys.executable, "-c", ASSEMBLE, str(tar), str(work), str(out)]
    code = REPO
    if as_user:
        command = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups",
                   *command]
        # The checkout may sit in a folder only root can enter (a CI clone in a
        # 0700 temporary folder): the other user gets a copy of the builder it can read.
        code = tmp_path / "code"
        shutil.copytree(REPO / "builder", code / "builder",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for folder in (code, *code.rglob("*")):
            folder.chmod(0o755 if folder.is_dir() else 0o644)
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(code)}, timeout=120)
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def stat_in(disk_path: Path, offset: int, path: str) -> tuple[int, int, int]:
    """(uid, gid, mode) of ``path`` in the ext4 at ``offset``, as debugfs reads it."""
    done = subprocess.run(["debugfs", "-R", f'stat "{path}"', f"{disk_path}?offset={offset}"],
                          capture_output=True, text=True, check=True)
    fields = done.stdout.split()
    uid = int(fields[fields.index("User:") + 1])
    gid = int(fields[fields.index("Group:") + 1])
    mode = int(fields[fields.index("Mode:") + 1], 8)
    return uid, gid, mode


@pytest.mark.parametrize("as_user", [None, "65534"], ids=["as-root", "as-nobody"])
def test_the_root_file_system_keeps_the_images_owners_and_modes(scratch, as_user):
    """Built as root or as nobody, /etc/shadow stays root:42 0640, sudo setuid, /home/app
    999's; a folder without write permission and an unreadable file are no obstacle."""
    out, plan = assemble(scratch, as_user=as_user)
    offset = plan["root_start"]
    assert stat_in(out, offset, "/etc/shadow") == (0, 42, 0o640)
    assert stat_in(out, offset, "/etc/unreadable") == (0, 0, 0o000)
    assert stat_in(out, offset, "/usr/bin/sudo") == (0, 0, 0o4755)
    assert stat_in(out, offset, "/home/app") == (999, 999, 0o700)
    assert stat_in(out, offset, "/home/app/notes") == (999, 999, 0o600)
    assert stat_in(out, offset, "/srv") == (0, 0, 0o555)
    assert stat_in(out, offset, "/etc/fstab")[:2] == (0, 0)  # written by Slipway: root's
    listing = subprocess.run(["debugfs", "-R", "ls -l /", f"{out}?offset={offset}"],
                             capture_output=True, text=True, check=True).stdout
    assert ".dockerenv" not in listing


def test_the_disk_is_a_gpt_with_an_esp_holding_the_boot_loader_and_kernel(tmp_path):
    out, plan = assemble(tmp_path, as_user=None)
    assert out.stat().st_size == plan["size"] == layout.GiB
    table = json.loads(subprocess.run(["sfdisk", "--json", str(out)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    esp, root = table["partitions"]
    assert esp["type"] == layout.ESP_TYPE and esp["start"] * 512 == plan["esp_start"]
    assert root["type"] == layout.ROOT_X86_64_TYPE and root["start"] * 512 == plan["root_start"]
    files = subprocess.run(["mdir", "-i", f"{out}@@{plan['esp_start']}", "-b", "-/", "::/"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout.split()
    for name in ("::/EFI/BOOT/BOOTX64.EFI", "::/vmlinuz", "::/initrd.img",
                 "::/loader/loader.conf", "::/loader/entries/slipway.conf"):
        assert name in files


def test_the_disk_file_is_sparse(tmp_path):
    """Holes are never written: a 1 GiB disk of a few files takes a few MiB."""
    out, _ = assemble(tmp_path, as_user=None)
    assert out.stat().st_blocks * 512 < 64 * layout.MiB
