"""Assemble the raw disk from a root folder: GPT, a FAT32 ESP and an ext4 root.

No loop device and no mount, so it runs in an unprivileged container: the
partition table is written into the disk file by ``sfdisk``, the ESP by
``mkfs.vfat --offset`` and ``mcopy -i DISK@@OFFSET``, and the root by
``mke2fs -E offset=... -d FOLDER``, straight from the folder. The disk file
stays sparse: what no tool writes is a hole, and holes are never uploaded.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from builder.ami import bootable, layout
from builder.errors import DiskAssemblyFailed

TOOLS = {
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
}


@dataclass(frozen=True)
class BootFiles:
    """Where the boot loader, kernel and initramfs are, inside the root folder."""

    loader: str
    kernel: str
    initrd: str

    @property
    def size(self) -> int:
        return sum(os.path.getsize(path) for path in (self.loader, self.kernel, self.initrd))


def check_tools() -> None:
    """Raise DiskAssemblyFailed, naming the Debian package, when a tool is missing."""
    missing = [name for name in TOOLS if shutil.which(name) is None]
    if missing:
        packages = " ".join(sorted({TOOLS[name] for name in missing}))
        raise DiskAssemblyFailed(
            f"The build host lacks {', '.join(missing)}, which assemble the disk: install "
            f"them (apt-get install {packages}).",
            tool=missing[0],
        )


# The names were checked above; tarfile's own filters (Python 3.11.4+) would also drop
# the setuid bits and absolute symlinks a root file system needs.
_TRUSTED = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
Owners = dict[str, tuple[int, int, int]]  # "/path" -> (uid, gid, st_mode)
_TYPE_BITS = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
              tarfile.CONTTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
              tarfile.SYMTYPE: stat.S_IFLNK, tarfile.FIFOTYPE: stat.S_IFIFO}


def extract_rootfs(stream: Iterable[bytes], folder: str) -> Owners:
    """Unpack ``docker export``'s tar stream into ``folder``, owners and modes kept.

    As root (in a container too: no privilege is needed), the files get their
    owners and modes. As another user they cannot, so they are returned
    instead and set in the file system after mke2fs (``fix_owners``).
    Device nodes are skipped (devtmpfs provides them at boot). A member that
    would land outside ``folder`` is refused: the tar comes from a container
    the repository's Dockerfile made.
    """
    as_root = os.geteuid() == 0
    owners: Owners = {}
    reader = _ChunkReader(stream)
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        for member in archive:
            name = os.path.normpath(member.name)
            if name.startswith(("/", "..")) or (member.islnk() and os.path.normpath(
                    member.linkname).startswith(("/", ".."))):
                raise DiskAssemblyFailed(
                    f"The image's files hold {member.name!r}, a path outside its root; "
                    "the disk is not made from it.",
                    tool="docker export", detail=member.name,
                )
            if member.isdev() or name == ".dockerenv":
                continue
            if as_root:
                archive.extract(member, folder, set_attrs=True, numeric_owner=True,
                                **_TRUSTED)
                continue
            # Modes are set later: a folder without write or a file without read
            # permission would stop the extraction or mke2fs here.
            archive.extract(member, folder, set_attrs=False, **_TRUSTED)
            path = "/" if name == "." else "/" + name
            if member.isfile() or member.isdir():
                os.utime(os.path.join(folder, name), (member.mtime, member.mtime))
            if not member.islnk() and member.type in _TYPE_BITS:
                owners[path] = (member.uid, member.gid, _TYPE_BITS[member.type] | member.mode)
    return owners


class _ChunkReader:
    """A file-like ``read`` over an iterable of byte chunks (the SDK's export stream)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def find_boot_files(root: str) -> BootFiles:
    names = os.listdir(os.path.join(root, "boot"))
    kernel, initrd = bootable.kernel_files(names)
    loader = os.path.join(root, "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    if not os.path.isfile(loader):
        raise DiskAssemblyFailed(
            "The bootable layer has no systemd-boot (usr/lib/systemd/boot/efi/"
            "systemd-bootx64.efi); its apt sources must offer systemd-boot-efi.",
            tool="systemd-boot",
        )
    return BootFiles(loader, os.path.join(root, "boot", kernel), os.path.join(root, "boot", initrd))


def configure_rootfs(root: str, *, unit: str, hostname: str, disk: layout.DiskLayout) -> None:
    """Write what makes the folder boot into the service: fstab, network, the unit, ..."""
    def write(path: str, text: str, mode: int = 0o644) -> None:
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if os.path.islink(full) or os.path.exists(full):
            os.unlink(full)
        with open(full, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(full, mode)

    def link(path: str, target: str) -> None:
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if os.path.islink(full) or os.path.exists(full):
            os.unlink(full)
        os.symlink(target, full)

    write("etc/fstab", bootable.fstab(disk.root_guid.lower(), disk.esp_guid.lower()))
    write("etc/hostname", hostname + "\n")
    write("etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                       "::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Empty: systemd makes the machine id at first boot, so every instance has its own.
    write("etc/machine-id", "", 0o444)
    link("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
    os.makedirs(os.path.join(root, "boot/efi"), exist_ok=True)
    write("etc/systemd/network/80-slipway-ethernet.network", bootable.NETWORK_FILE)
    write("etc/systemd/system/systemd-networkd-wait-online.service.d/slipway.conf",
          bootable.WAIT_ONLINE_DROPIN)
    write(f"etc/systemd/system/{bootable.UNIT_NAME}", unit)
    link(f"etc/systemd/system/multi-user.target.wants/{bootable.UNIT_NAME}",
         f"/etc/systemd/system/{bootable.UNIT_NAME}")
    link("etc/systemd/system/default.target", "/lib/systemd/system/multi-user.target")


def measure_tree(root: str) -> tuple[list[int], int]:
    """The sizes of the regular files under ``root`` (hard links once) and its folder count."""
    sizes, folders, seen = [], 0, set()
    for _dirpath, dirnames, filenames in os.walk(root):
        folders += len(dirnames)
        for name in filenames:
            stat = os.lstat(os.path.join(_dirpath, name))
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            sizes.append(stat.st_size)
    return sizes, folders + 1


def is_executable_in(root: str):
    """``is_executable(path_in_image)`` for bootable.resolve_executable, symlinks followed
    inside ``root``."""
    def is_executable(path: str) -> bool:
        full = _resolve_inside(root, path)
        return full is not None and os.path.isfile(full) and os.access(full, os.X_OK)
    return is_executable


def _resolve_inside(root: str, path: str, depth: int = 0) -> str | None:
    if depth > 40:
        return None
    parts = [part for part in path.split("/") if part and part != "."]
    current = root
    for index, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            rest = "/".join(parts[index + 1:])
            base = target if target.startswith("/") else \
                os.path.join("/", os.path.relpath(current, root), target)
            return _resolve_inside(root, os.path.join(base, rest), depth + 1)
        current = candidate
    return current


def assemble(disk_path: str, root: str, boot: BootFiles, disk: layout.DiskLayout,
             *, work: str, owners: Owners | None = None) -> None:
    """Write the GPT, the ESP and the root file system into ``disk_path``.

    ``owners`` (from a non-root extract_rootfs) are set in the root file system.
    """
    with open(disk_path, "wb") as f:
        f.truncate(disk.size)
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", disk_path],
         input=layout.sfdisk_script(disk))
    _write_esp(disk_path, boot, disk, work=work)
    _write_root(disk_path, root, disk)
    if owners is not None and os.geteuid() != 0:
        fix_owners(disk_path, root, disk, owners, work=work)


def fix_owners(disk_path: str, root: str, disk: layout.DiskLayout, owners: Owners,
               *, work: str) -> None:
    """Set every inode's owner and mode with debugfs, as the image had them; what Slipway
    wrote (fstab, the unit, ...) belongs to root."""
    commands = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            full = os.path.join(dirpath, name) if name else dirpath
            path = "/" + os.path.relpath(full, root) if full != root else "/"
            if '"' in path or "\n" in path:
                continue  # debugfs cannot quote these; they keep the builder's owner
            info = os.lstat(full)
            uid, gid, mode = owners.get(path, (0, 0, info.st_mode))
            commands += [f'sif "{path}" uid {uid}', f'sif "{path}" gid {gid}',
                         f'sif "{path}" mode 0{mode:o}']
    script = os.path.join(work, "owners.debugfs")
    with open(script, "w", encoding="utf-8") as f:
        f.write("\n".join(commands) + "\n")
    _run(["debugfs", "-w", "-f", script, f"{disk_path}?offset={disk.root_start}"])


def _write_esp(disk_path: str, boot: BootFiles, disk: layout.DiskLayout, *, work: str) -> None:
    volume_id = disk.esp_guid.replace("-", "")[:8]
    start = str(disk.esp_start // layout.SECTOR)
    # One sector per cluster keeps a 128 MiB FAT32 above FAT32's 65525 clusters;
    # the hidden sectors say where the partition starts, as a partitioned disk's FAT does.
    _run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "ESP", "-i", volume_id,
          "-h", start, "--offset", start, disk_path,
          str(disk.esp_size // layout.KiB)])
    staging = os.path.join(work, "esp")
    os.makedirs(os.path.join(staging, "EFI/BOOT"))
    os.makedirs(os.path.join(staging, "loader/entries"))
    shutil.copyfile(boot.loader, os.path.join(staging, "EFI/BOOT/BOOTX64.EFI"))
    shutil.copyfile(boot.kernel, os.path.join(staging, "vmlinuz"))
    shutil.copyfile(boot.initrd, os.path.join(staging, "initrd.img"))
    with open(os.path.join(staging, "loader/loader.conf"), "w", encoding="utf-8") as f:
        f.write(bootable.LOADER_CONF)
    with open(os.path.join(staging, "loader/entries/slipway.conf"), "w", encoding="utf-8") as f:
        f.write(bootable.loader_entry("Slipway", disk.root_guid.lower()))
    image = f"{disk_path}@@{disk.esp_start}"
    # mtools checks a FAT's geometry against a floppy's unless told not to.
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    _run(["mcopy", "-i", image, "-s", "-Q",
          *(os.path.join(staging, name) for name in sorted(os.listdir(staging))), "::/"], env=env)
    shutil.rmtree(staging)


def _write_root(disk_path: str, root: str, disk: layout.DiskLayout) -> None:
    options = [
        f"offset={disk.root_start}",
        # Inode tables and journal stay holes: EBS and a sparse file read them as zeros.
        "lazy_itable_init=1", "lazy_journal_init=1", "nodiscard",
    ]
    features = []
    if _mke2fs_version() >= (1, 47):
        # Kernels before 5.15 (Debian 11) cannot mount a file system with an orphan file.
        features = ["-O", "^orphan_file"]
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(layout.EXT4_BLOCK), "-L", "root",
          "-U", disk.root_guid.lower(), "-E", ",".join(options), *features,
          "-d", root, disk_path, str(disk.root_size // layout.EXT4_BLOCK)])


def _mke2fs_version() -> tuple[int, ...]:
    result = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, check=False)
    found = re.search(r"mke2fs (\d+)\.(\d+)", result.stderr + result.stdout)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _run(argv: list[str], *, input: str | None = None, env=None) -> None:
    try:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, env=env,
                                check=False)
    except FileNotFoundError as exc:
        raise DiskAssemblyFailed(
            f"{argv[0]} is not installed on the build host: apt-get install "
            f"{TOOLS.get(argv[0], argv[0])}.", tool=argv[0], detail=str(exc),
        ) from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        last = detail.splitlines()[-1] if detail else f"exit {result.returncode}"
        raise DiskAssemblyFailed(
            f"{argv[0]} failed while assembling the disk: {last}",
            tool=argv[0], detail=detail,
        )
