"""What turns a service's Docker image into a machine that boots and runs it.

Pure: no Docker, disk or network. Given the service image's config (its
``ENTRYPOINT``/``CMD``, ``ENV``, ``WORKDIR``, ``USER``) and its
``/etc/os-release``, this module writes the texts the bootable disk holds: the
Dockerfile of the bootable layer, the systemd unit of the service, the network
configuration, the boot loader's entry and the fstab.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from builder.errors import DiskAssemblyFailed, UnsupportedBaseImage

SUPPORTED_BASES = "Debian (11 bullseye or later) or Ubuntu (22.04 or later)"
UNIT_NAME = "slipway-service.service"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's

# The packages that make a Debian or Ubuntu userland boot on EC2 and in QEMU.
# Ubuntu has no linux-image-cloud-amd64; linux-image-aws is its kernel made for EC2.
# systemd-boot and systemd-resolved have packages of their own since systemd 252
# (Debian 12, Ubuntu 23.04); before, the systemd package carries them.
_PACKAGES = {
    "debian": ("linux-image-cloud-amd64", "systemd", "systemd-sysv", "udev", "initramfs-tools",
               "zstd"),
    "ubuntu": ("linux-image-aws", "systemd", "systemd-sysv", "udev", "initramfs-tools", "zstd"),
}


@dataclass(frozen=True)
class ImageConfig:
    """The parts of a Docker image's config that say how to run it."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str

    @classmethod
    def from_inspect(cls, attributes: Mapping) -> ImageConfig:
        """From the engine's ``GET /images/{id}/json`` answer."""
        config = attributes.get("Config") or {}
        env = []
        for item in config.get("Env") or ():
            key, _, value = item.partition("=")
            env.append((key, value))
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=tuple(env),
            workdir=config.get("WorkingDir") or "/",
            user=config.get("User") or "",
        )

    @property
    def argv(self) -> tuple[str, ...]:
        """What ``docker run IMAGE`` runs: the entrypoint followed by the command."""
        return self.entrypoint + self.cmd

    @property
    def path(self) -> str:
        return dict(self.env).get("PATH", DEFAULT_PATH)


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` (a shell-like KEY=value file) as a dict."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields[key.strip()] = value
    return fields


def distribution_of(os_release: str | None, *, image: str) -> str:
    """``"debian"`` or ``"ubuntu"``; raise UnsupportedBaseImage for anything else."""
    fields = parse_os_release(os_release or "")
    ident = fields.get("ID", "").lower()
    like = fields.get("ID_LIKE", "").lower().split()
    if ident in _PACKAGES:
        return ident
    if "ubuntu" in like:
        return "ubuntu"
    if "debian" in like:
        return "debian"
    found = (fields.get("PRETTY_NAME") or fields.get("ID")
             or "an unknown system (no /etc/os-release)")
    raise UnsupportedBaseImage(
        f"The image {image} is based on {found}, and a machine image can only be made from "
        f"an image based on {SUPPORTED_BASES}: start the Dockerfile's last stage FROM such "
        f"an image (python:3.11-slim, debian:bookworm-slim, ubuntu:24.04, ...).",
        image=image,
        found=found,
    )


def final_base(dockerfile: str) -> str | None:
    """The image the Dockerfile's last stage starts FROM, through its stage names; None
    when a build argument decides it (``FROM $BASE``)."""
    stages: dict[str, str] = {}
    last = None
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [word for word in words[1:] if not word.startswith("--")]
        if not words:
            continue
        base = stages.get(words[0].lower(), words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages[words[2].lower()] = base
        last = base
    return None if last is None or "$" in last else last


def bootable_dockerfile(base_image: str, distribution: str) -> str:
    """The Dockerfile of the layer that adds a kernel, an initramfs, systemd and a boot loader.

    It runs as root whatever the service's ``USER`` is; the service's own user is
    restored by its systemd unit.
    """
    packages = " ".join(_PACKAGES[distribution])
    return (
        f"FROM {base_image}\n"
        "USER root\n"
        "WORKDIR /\n"
        # zstd: initramfs-tools packs the initramfs with zstd when it is there (faster to
        # unpack at boot than gzip); MODULES=most keeps the drivers of every EC2 family.
        "RUN set -eu; export DEBIAN_FRONTEND=noninteractive; \\\n"
        "    mkdir -p /etc/initramfs-tools/conf.d; \\\n"
        "    printf 'MODULES=most\\nCOMPRESS=zstd\\n' >/etc/initramfs-tools/conf.d/slipway; \\\n"
        "    apt-get update -q; \\\n"
        "    split=''; for p in systemd-boot-efi systemd-resolved; do \\\n"
        "      if apt-cache show $p >/dev/null 2>&1; then split=\"$split $p\"; fi; done; \\\n"
        f"    apt-get install -y -q --no-install-recommends {packages} $split; \\\n"
        "    apt-get clean; rm -rf /var/lib/apt/lists/*; \\\n"
        "    systemctl enable systemd-networkd.service systemd-resolved.service\n"
    )


def systemd_quote(word: str) -> str:
    """One argument of ``ExecStart=``, double-quoted, with systemd's own escapes.

    ``$`` and ``%`` are doubled: systemd would expand them, and Docker does not.
    (systemd.service(5), "Command lines"; systemd.unit(5), "Specifiers".)
    """
    escaped = (word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("$", "$$").replace("%", "%%"))
    return f'"{escaped}"'


def environment_line(key: str, value: str) -> str:
    """One ``Environment=`` line; systemd expands no ``$`` there, only ``%`` specifiers."""
    pair = f"{key}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{pair}"'


def resolve_executable(
    argv0: str, search_path: str, workdir: str, is_executable: Callable[[str], bool]
) -> str:
    """The absolute path systemd needs for ``argv0``, found the way Docker finds it.

    Docker looks a bare name up in the image's ``PATH``; systemd only in its own
    fixed list, so the lookup is done here, in the image's files.
    """
    if argv0.startswith("/"):
        return argv0
    if "/" in argv0:
        return posixpath.normpath(posixpath.join(workdir or "/", argv0))
    for folder in search_path.split(":"):
        if folder and is_executable(posixpath.join(folder, argv0)):
            return posixpath.join(folder, argv0)
    return argv0  # systemd reports it as not found, in the journal and on the console


def service_unit(
    config: ImageConfig, *, description: str, is_executable: Callable[[str], bool]
) -> str:
    """The systemd unit that runs the image's entrypoint as ``docker run`` would, and again
    whenever it fails."""
    argv = list(config.argv)
    if not argv:
        raise UnsupportedBaseImage(
            "The image has neither ENTRYPOINT nor CMD, so the machine would have nothing to "
            "run: add a CMD to the Dockerfile.",
            image=description,
            found="no ENTRYPOINT or CMD",
        )
    argv[0] = resolve_executable(argv[0], config.path, config.workdir, is_executable)
    user, _, group = config.user.partition(":")
    lines = [
        "[Unit]",
        f"Description={description.replace('%', '%%')}",
        "Wants=network-online.target",
        "After=network-online.target",
        # Never give up: a service that crashes at boot keeps being restarted.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(systemd_quote(word) for word in argv)}",
        f"WorkingDirectory={config.workdir or '/'}",
    ]
    if user:
        lines.append(f"User={user}")
    if group:
        lines.append(f"Group={group}")
    lines += [environment_line(key, value) for key, value in config.env]
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        # As `docker stop`: SIGTERM, then SIGKILL after 10 s.
        "TimeoutStopSec=10",
        "StandardOutput=journal+console",
        "StandardError=journal+console",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


NETWORK_FILE = """\
# Every Ethernet interface asks DHCP for an address (ENA on EC2, virtio in QEMU).
[Match]
Type=ether

[Network]
DHCP=yes

[DHCPv4]
UseDomains=yes
"""

# network-online.target waits for one interface, not all of them, and for at most 30 s.
WAIT_ONLINE_DROPIN = """\
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
"""

LOADER_CONF = """\
default slipway.conf
timeout 0
editor no
"""


def kernel_command_line(root_partuuid: str) -> str:
    """Boot straight to the service: root by partition UUID, console on the serial port too."""
    return (
        f"root=PARTUUID={root_partuuid} rw rootwait quiet "
        # EC2's serial console and "Get system log" read ttyS0.
        "console=tty0 console=ttyS0,115200n8 "
        # AWS's advice for EBS on NVMe: never time an I/O out.
        "nvme_core.io_timeout=4294967295 "
        "systemd.show_status=auto"
    )


def loader_entry(title: str, root_partuuid: str) -> str:
    return (
        f"title {title}\n"
        "linux /vmlinuz\n"
        "initrd /initrd.img\n"
        f"options {kernel_command_line(root_partuuid)}\n"
    )


def fstab(root_partuuid: str, esp_partuuid: str) -> str:
    return (
        f"PARTUUID={root_partuuid} / ext4 defaults,errors=remount-ro 0 1\n"
        f"PARTUUID={esp_partuuid} /boot/efi vfat defaults,nofail,umask=0077 0 2\n"
    )


def hostname_for(service: str) -> str:
    """A valid host name (RFC 1123 label) made from the service name."""
    label = re.sub(r"[^a-z0-9-]+", "-", service.lower()).strip("-")[:63].strip("-")
    return label or "slipway"


def kernel_files(names: Sequence[str]) -> tuple[str, str]:
    """``(vmlinuz-V, initrd.img-V)`` of the newest kernel among the names in ``/boot``."""
    versions = sorted(
        (name.removeprefix("vmlinuz-") for name in names if name.startswith("vmlinuz-")),
        key=_version_key,
    )
    for version in reversed(versions):
        if f"initrd.img-{version}" in names:
            return f"vmlinuz-{version}", f"initrd.img-{version}"
    raise DiskAssemblyFailed(
        "The bootable layer left no kernel with an initramfs in /boot; the image's apt "
        "sources must offer the kernel package.",
        tool="update-initramfs", detail=", ".join(names) or "an empty /boot",
    )


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.-]", version))
