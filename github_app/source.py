"""Unpack a repository tarball from GitHub safely.

GitHub's tarball of a commit holds one top folder (`owner-repo-sha7/`); the
files of the repository are below it. The archive comes from the network and
the repository's authors control its content, so nothing in it may write
outside the destination: absolute paths, `..`, links that leave the tree,
device files and FIFOs are refused, and so is an archive with too many entries
or that unpacks to more than a size cap (a "tar bomb").

What the repository holds is the repository's to fix: those refusals raise
`SourceRefused` (status `failure`, the offending path named). An archive that
cannot be read at all (a broken download) is a `SourceError` of the
infrastructure. Disk only; no network."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path, PurePosixPath

from github_app.errors import SourceError, SourceRefused

DEFAULT_MAX_UNPACKED_BYTES = 2 * 1024**3
DEFAULT_MAX_MEMBERS = 200_000
# Errors of the build host, not of the archive: a full or broken disk.
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


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
                if member.name in ("pax_global_header",) or member.type in (
                    tarfile.XGLTYPE,
                    tarfile.XHDTYPE,
                ):
                    continue
                shown = _shown(member.name)
                if count > max_members:
                    raise SourceRefused(
                        f"The repository holds more than {max_members} files and folders "
                        f"(the limit was passed at {shown}); Slipway refuses it to protect "
                        "the build host.",
                        path=shown,
                    )
                _check_member(member, root)
                total += max(member.size, 0)
                if total > max_unpacked_bytes:
                    raise SourceRefused(
                        f"The repository unpacks to more than {max_unpacked_bytes // 1024**2} "
                        f"MiB (the limit was passed at {shown}, {member.size} bytes); Slipway "
                        "refuses it. Keep large files out of the repository (Git LFS or an "
                        "artifact store).",
                        path=shown,
                    )
                parts = PurePosixPath(member.name).parts
                if not parts:
                    if member.isdir():
                        continue  # "./": the destination itself
                    raise SourceRefused(
                        f"The repository holds an entry without a name ({member.name!r}); "
                        "refused.", path=member.name)
                top_folders.add(parts[0])
                try:
                    # The "data" filter re-checks every rule above in the standard library.
                    tar.extract(member, root, filter="data")
                except tarfile.FilterError as exc:
                    raise SourceRefused(
                        f"The repository holds {shown}, which would be unpacked outside its "
                        f"folder or is not a plain file, folder or link ({exc}); refused.",
                        path=shown,
                    ) from None
                except OSError as exc:
                    if exc.errno in _HOST_ERRNOS:
                        raise
                    # A file where a folder is, a name too long...: the archive's doing.
                    raise SourceRefused(
                        f"The repository's entry {shown!r} cannot be unpacked "
                        f"({exc.strerror or exc}); refused.",
                        path=shown,
                    ) from None
                except (KeyError, RecursionError):
                    # tarfile's answer to a link it cannot make and whose target is not in
                    # the archive (it then looks for the target among the members).
                    raise SourceRefused(
                        f"The repository holds a link, {shown!r} -> "
                        f"{_shown(member.linkname)!r}, to a file it does not hold; refused.",
                        path=shown,
                    ) from None
    except SourceError:
        raise
    except tarfile.TarError as exc:
        raise SourceError(f"The source archive from GitHub could not be read: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"The source archive could not be unpacked: {exc}") from exc
    if len(top_folders) == 1:
        only = root / top_folders.pop()
        if only.is_dir():
            return only
    return root


def _shown(name: str) -> str:
    """The member's path as the repository knows it: without GitHub's top folder."""
    parts = name.split("/", 1)
    shown = parts[1] if len(parts) == 2 and parts[1] else name
    # A hostile name may hold control characters or be huge: keep the message readable.
    shown = shown.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    shown = _shown(name)
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise SourceRefused(
            f"The repository holds an absolute path, {name!r}; refused.", path=name)
    if ".." in path.parts:
        raise SourceRefused(
            f"The repository holds a path that leaves its folder, {shown!r}; refused.",
            path=shown,
        )
    if member.isdev() or member.isfifo():
        raise SourceRefused(
            f"The repository holds a device or FIFO, {shown!r}; refused.", path=shown)
    if member.issym() or member.islnk():
        target = member.linkname
        if not target:
            raise SourceRefused(
                f"The repository holds a link without a target, {shown!r}; refused.", path=shown)
        if member.issym():
            base = (root / path).parent
            resolved = os.path.normpath(os.path.join(base, target))
        else:
            resolved = os.path.normpath(os.path.join(root, target))
        if os.path.isabs(target) or not _inside(Path(resolved), root):
            raise SourceRefused(
                f"The repository holds a link that leaves it, {shown!r} -> {target!r}; "
                "refused.",
                path=shown,
            )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
