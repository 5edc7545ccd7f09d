"""Fuzz: hostile tarballs fed to the unpacker never write outside the work folder.

Hypothesis builds archives of regular files, folders, symbolic and hard links, devices and
FIFOs whose names and link targets mix `..`, absolute paths, the path of a folder beside
the work folder and links through earlier links. Whatever the archive, the unpacker either
returns or raises a SourceError, and nothing outside the work folder changes."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from github_app.errors import SourceError
from github_app.source import unpack_tarball

# The folder beside the work folder that hostile entries aim at (made fresh per example).
TARGET = "TARGET"
PARTS = ["top", "a", "b", "l", "l2", "..", ".", "", "evil", "top/l", TARGET]
TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.SYMTYPE,
         tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]

relative = st.lists(st.sampled_from(PARTS), min_size=1, max_size=5).map("/".join)
names = st.one_of(relative, relative.map(lambda p: "/" + p), relative.map(lambda p: "top/" + p))
member = st.tuples(st.sampled_from(TYPES), names,
                   st.one_of(relative, relative.map(lambda p: "/" + p),
                             st.just("../" * 3 + TARGET), st.just("{target}")),
                   st.binary(max_size=16), st.sampled_from([0o644, 0o755, 0o4755, 0o777]))


def build(entries, target: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for kind, name, link, data, mode in entries:
            name = name.replace(TARGET, str(target).lstrip("/"))
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = str(target) if link == "{target}" else link
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def snapshot(base: Path, skip: Path) -> dict:
    """Every path under `base` but `skip`, with its type, size, mode and content."""
    found = {}
    for folder, dirs, files in os.walk(base, followlinks=False):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if path == skip:
                continue
            info = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            found[str(path)] = (info.st_mode, info.st_size, content)
    return found


# SLIPWAY_FUZZ_EXAMPLES=5000 for a longer hunt than the suite's.
@settings(max_examples=int(os.environ.get("SLIPWAY_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(member, min_size=1, max_size=8))
def test_no_hostile_tarball_writes_outside_the_work_folder(entries):
    """Whatever the archive holds, only the work folder changes, and errors are SourceErrors."""
    base = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        target = base / TARGET
        target.mkdir()
        (target / "keep.txt").write_bytes(b"untouched")
        work = base / "work"
        work.mkdir()
        archive = base / "source.tar"
        archive.write_bytes(build(entries, target))
        before = snapshot(base, skip=work)
        with contextlib.suppress(SourceError):
            unpack_tarball(archive, work / "src")
        assert snapshot(base, skip=work) == before
        # No link unpacked into the work folder points out of it.
        for folder, dirs, files in os.walk(work):
            for name in dirs + files:
                path = Path(folder) / name
                if path.is_symlink():
                    # realpath, not resolve: a loop of links inside the folder is harmless.
                    real = os.path.realpath(path)
                    assert real == str(work.resolve()) or real.startswith(f"{work.resolve()}/")
    finally:
        shutil.rmtree(base, ignore_errors=True)
