"""Free disk where builds write: the Docker engine's data root and DATA_DIR.

A build that starts on a full disk fails halfway with an error about a layer
or a log line; Slipway checks first, against MIN_FREE_DISK, and says how much
is free and what is needed. `free_spaces` measures (disk I/O: statvfs);
`shortfalls` and `LowDiskSpace` are pure.

The engine's data root is measured where this process can see it: on the
build host itself (the usual case) it is a local path. When the engine is on
another machine its path does not exist here and only DATA_DIR is measured.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from github_app.config import format_size
from github_app.errors import LowDiskSpace


@dataclass(frozen=True)
class Space:
    """Free bytes at one place a build writes to."""

    what: str  # "DATA_DIR", "the Docker engine's data root"
    path: str
    free: int


def free_bytes(path: str | Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system of `path` (or its parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def free_spaces(data_dir: str | Path, docker_root: str | None) -> list[Space]:
    """The free space of DATA_DIR and, when it is visible from here, the engine's data root."""
    spaces = []
    free = free_bytes(data_dir)
    if free is not None:
        spaces.append(Space("DATA_DIR", str(data_dir), free))
    if docker_root and Path(docker_root).exists():
        spaces.append(Space("the Docker engine's data root", docker_root,
                            shutil.disk_usage(docker_root).free))
    return spaces


def shortfalls(spaces: list[Space], minimum: int) -> list[Space]:
    """The places with less than `minimum` bytes free."""
    return [space for space in spaces if space.free < minimum]


def check_free_disk(data_dir: str | Path, docker_root: str | None, minimum: int) -> list[Space]:
    """Raise LowDiskSpace when a place a build writes to is short; else return what was seen."""
    spaces = free_spaces(data_dir, docker_root)
    short = shortfalls(spaces, minimum)
    if short:
        parts = "; ".join(f"{format_size(s.free)} free in {s.path} ({s.what})" for s in short)
        raise LowDiskSpace(
            f"Not enough free disk to build: {parts}, and a build needs "
            f"{format_size(minimum)} (MIN_FREE_DISK). Free some space on the build host (old "
            "images, build logs), or lower MIN_FREE_DISK; then choose Re-run.",
            free={s.path: s.free for s in short}, needed=minimum,
        )
    return spaces


class DiskGuard:
    """The free-disk check a worker runs before each build; finds the engine's data root once."""

    def __init__(self, config, docker_client=None):
        self.config = config
        self.docker_client = docker_client
        self._root: str | None = None
        self._looked = False

    def docker_root(self) -> str | None:
        if not self._looked:
            from builder import BuilderError, engine

            try:
                with engine.opened(self.docker_client, settings=self.config.engine) as client:
                    self._root = engine.data_root(client)
                self._looked = True
            except BuilderError:
                return None  # no engine now: the build itself will say so
        return self._root

    def check(self) -> list[Space]:
        return check_free_disk(self.config.data_dir, self.docker_root(), self.config.min_free_disk)
