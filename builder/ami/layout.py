"""The shape of the raw disk: its size, its two GPT partitions and their UUIDs.

Pure: sizes in, a layout and the sfdisk script out. The disk is x86_64 UEFI:
an EFI system partition (FAT32: the boot loader, the kernel, the initramfs)
and an ext4 root. Its size is the content plus a stated margin, rounded up to
whole GiB, since an EBS snapshot's size is counted in GiB.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SECTOR = 512
ALIGN = MiB  # partitions start on MiB boundaries, as every partitioning tool does

# https://uapi-group.org/specifications/specs/discoverable_partitions_specification/
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

# The margin: the root file system keeps at least a quarter of its content, and at
# least 256 MiB, free for what the service writes (logs, caches, temporary files).
FREE_RATIO = 0.25
FREE_MIN = 256 * MiB
# ext4 as mke2fs makes it here: 5 % reserved for root, one 256-byte inode per
# 16 KiB, a 64 MiB journal for file systems between 1 and 16 GiB.
EXT4_RESERVED = 0.05
EXT4_INODE_RATIO = 16 * KiB
EXT4_INODE_SIZE = 256
EXT4_JOURNAL = 64 * MiB
EXT4_BLOCK = 4 * KiB

ESP_MIN = 128 * MiB
GPT_TAIL = MiB  # the backup GPT at the end, rounded up to keep the root aligned


@dataclass(frozen=True)
class DiskLayout:
    size: int
    esp_start: int
    esp_size: int
    root_start: int
    root_size: int
    disk_guid: str
    esp_guid: str
    root_guid: str

    @property
    def gib(self) -> int:
        return self.size // GiB


def round_up(value: float, unit: int) -> int:
    return int(math.ceil(value / unit)) * unit


def ext4_content_bytes(file_sizes: list[int] | tuple[int, ...], *, folders: int) -> int:
    """The bytes that ``file_sizes`` and ``folders`` take in ext4: whole blocks, one inode each."""
    data = sum(round_up(size, EXT4_BLOCK) for size in file_sizes) + folders * EXT4_BLOCK
    return data + (len(file_sizes) + folders) * EXT4_INODE_SIZE


def root_free_margin(content: int) -> int:
    return max(int(content * FREE_RATIO), FREE_MIN)


def root_size_for(content: int) -> int:
    """The smallest ext4 that holds ``content`` and keeps the margin free for users."""
    usable = 1 - EXT4_RESERVED - EXT4_INODE_SIZE / EXT4_INODE_RATIO
    return round_up((content + EXT4_JOURNAL + root_free_margin(content)) / usable, ALIGN)


def esp_size_for(boot_files: int) -> int:
    """FAT32 for the boot loader, kernel and initramfs, with room for a second kernel."""
    return max(ESP_MIN, round_up(boot_files * 2 + 16 * MiB, ALIGN))


def plan_disk(root_content: int, boot_files: int, *, seed: str) -> DiskLayout:
    """The layout for ``root_content`` bytes of root and ``boot_files`` bytes of ESP.

    ``seed`` (the AMI name and revision) makes the partition UUIDs the same on
    every build of one version, so two builds of one commit give the same disk.
    """
    esp_size = esp_size_for(boot_files)
    esp_start = ALIGN
    root_start = esp_start + esp_size
    size = round_up(root_start + root_size_for(root_content) + GPT_TAIL, GiB)
    return DiskLayout(
        size=size,
        esp_start=esp_start,
        esp_size=esp_size,
        root_start=root_start,
        root_size=size - GPT_TAIL - root_start,
        disk_guid=_guid(seed, "disk"),
        esp_guid=_guid(seed, "esp"),
        root_guid=_guid(seed, "root"),
    )


def _guid(seed: str, part: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"slipway-ami:{seed}:{part}")).upper()


def sfdisk_script(layout: DiskLayout) -> str:
    """The input of ``sfdisk DISK`` that writes the GPT (sfdisk(8), "Input format")."""
    return (
        "label: gpt\n"
        f"label-id: {layout.disk_guid}\n"
        "unit: sectors\n"
        f"start={layout.esp_start // SECTOR}, size={layout.esp_size // SECTOR}, "
        f'type={ESP_TYPE}, uuid={layout.esp_guid}, name="EFI System Partition"\n'
        f"start={layout.root_start // SECTOR}, size={layout.root_size // SECTOR}, "
        f'type={ROOT_X86_64_TYPE}, uuid={layout.root_guid}, name="root"\n'
    )
