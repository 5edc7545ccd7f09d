"""The disk as EBS sees it: 512 KiB blocks, only those that are not all zero.

Reads the file's data regions (``SEEK_DATA``/``SEEK_HOLE``) so that the holes of
a sparse disk are never read, then skips the blocks that hold only zeros: EBS
reads a block never written as zeros.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

EBS_BLOCK = 512 * 1024  # the EBS direct APIs' block size (BlockSize of StartSnapshot)
_ZERO = bytes(EBS_BLOCK)


@dataclass(frozen=True)
class Block:
    index: int
    data: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def checksum(self) -> str:
        """Base64 SHA256, the ``x-amz-Checksum`` of PutSnapshotBlock."""
        return base64.b64encode(self.digest).decode()


def candidate_indexes(fd: int, size: int) -> Iterator[int]:
    """The indexes of the blocks that overlap a data region of the file (not a hole)."""
    offset = 0
    last = -1
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        for index in range(max(start // EBS_BLOCK, last + 1), (end - 1) // EBS_BLOCK + 1):
            yield index
            last = index
        offset = end


def nonzero_blocks(path: str) -> Iterator[Block]:
    """Every 512 KiB block of ``path`` that is not all zeros, in index order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for index in candidate_indexes(fd, size):
            data = os.pread(fd, EBS_BLOCK, index * EBS_BLOCK)
            if len(data) < EBS_BLOCK:  # the last block of a disk that is not whole GiB
                data += bytes(EBS_BLOCK - len(data))
            if data != _ZERO:
                yield Block(index, data)
    finally:
        os.close(fd)


def linear_checksum(digests: list[bytes]) -> str:
    """CompleteSnapshot's aggregated checksum: SHA256 of the blocks' SHA256 digests
    concatenated in index order (``ChecksumAggregationMethod=LINEAR``), base64."""
    return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
