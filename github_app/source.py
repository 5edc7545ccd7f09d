"""Unpack a repository tarball from GitHub safely.

GitHub's tarball of a commit holds one top folder (`owner-repo-sha7/`); the
files of the repository are below it. The archive comes from the network and
the repository's authors control its content, so nothing in it may write
outside the destination: absolute paths, `..`, links that leave the tree,
device files and FIFOs are refused, and so is an archive that unpacks to more
than a size cap (a "tar bomb"). Disk only; no network."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

from github_app.errors import SourceError

DEFAULT_MAX_UNPACKED_BYTES = 2 * 1024**3
DEFAULT_MAX_MEMBERS = 200_000


def unpack_tarball(
    archive: Path,
    dest: Path,
    *,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Unpack `archive` into `dest` and return the repository's root folder."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    total = 0
    top_folders: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise SourceError(
                        f"The source archive holds more than {max_members} entries; "
                        "Slipway refuses it to protect the build host."
                    )
                if member.name in ("pax_global_header",) or member.type in (
                    tarfile.XGLTYPE,
                    tarfile.XHDTYPE,
                ):
                    continue
                _check_member(member, root)
                total += max(member.size, 0)
                if total > max_unpacked_bytes:
                    raise SourceError(
                        f"The source unpacks to more than {max_unpacked_bytes // 1024**2} MiB; "
                        "Slipway refuses it. Keep large files out of the repository "
                        "(Git LFS or an artifact store)."
                    )
                top_folders.add(PurePosixPath(member.name).parts[0])
                # The "data" filter re-checks every rule above in the standard library.
                tar.extract(member, root, filter="data")
    except tarfile.TarError as exc:
        raise SourceError(f"The source archive from GitHub could not be read: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"The source archive could not be unpacked: {exc}") from exc
    if len(top_folders) == 1:
        only = root / top_folders.pop()
        if only.is_dir():
            return only
    return root


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise SourceError(f"The source archive holds an absolute path ({name!r}); refused.")
    if ".." in path.parts:
        raise SourceError(
            f"The source archive holds a path that leaves its folder ({name!r}); refused."
        )
    if member.isdev() or member.isfifo():
        raise SourceError(f"The source archive holds a device or FIFO ({name!r}); refused.")
    if member.issym() or member.islnk():
        target = member.linkname
        if member.issym():
            base = (root / path).parent
            resolved = os.path.normpath(os.path.join(base, target))
        else:
            resolved = os.path.normpath(os.path.join(root, target))
        if os.path.isabs(target) or not _inside(Path(resolved), root):
            raise SourceError(
                f"The source archive holds a link that leaves the repository "
                f"({name!r} -> {target!r}); refused."
            )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
