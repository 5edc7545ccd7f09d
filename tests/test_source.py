"""The source tarball is unpacked without letting the repository write outside its folder."""

from __future__ import annotations

import io
import tarfile

import pytest

from github_app.errors import INFRASTRUCTURE, REPOSITORY, SourceError, SourceRefused
from github_app.source import unpack_tarball


def make_tarball(path, entries):
    """entries: (TarInfo fields dict, bytes | None)."""
    with tarfile.open(path, "w:gz") as tar:
        for fields, data in entries:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def github_layout(path, files):
    top = "octocat-Hello-World-7fd1a60"
    entries = [({"name": top, "type": tarfile.DIRTYPE, "mode": 0o755}, None)]
    entries += [({"name": f"{top}/{name}"}, data) for name, data in files.items()]
    return make_tarball(path, entries)


def test_github_layout_unpacks_to_the_repository_root(tmp_path):
    """The single top folder of GitHub's tarball is the repository root the build uses."""
    archive = github_layout(
        tmp_path / "src.tar.gz", {"Dockerfile": b"FROM scratch\n", "app/main.py": b"print(1)\n"}
    )
    root = unpack_tarball(archive, tmp_path / "out")
    assert (root / "Dockerfile").read_bytes() == b"FROM scratch\n"
    assert (root / "app" / "main.py").exists()


@pytest.mark.parametrize(
    ("fields", "data", "says"),
    [
        ({"name": "/etc/cron.d/evil"}, b"x", "absolute path"),
        ({"name": "top/../../evil"}, b"x", "leaves its folder"),
        ({"name": "top/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None, "link"),
        ({"name": "top/link", "type": tarfile.SYMTYPE, "linkname": "../../x"}, None, "link"),
        ({"name": "top/hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, None, "link"),
        ({"name": "top/dev", "type": tarfile.CHRTYPE, "devminor": 3}, None, "device"),
        ({"name": "top/fifo", "type": tarfile.FIFOTYPE}, None, "FIFO"),
    ],
)
def test_hostile_entries_are_refused(tmp_path, fields, data, says):
    """Absolute paths, `..`, escaping links, devices and FIFOs are the repository's fault,
    with the offending path named."""
    archive = make_tarball(tmp_path / "bad.tar.gz", [(dict(fields), data)])
    with pytest.raises(SourceRefused, match=says) as info:
        unpack_tarball(archive, tmp_path / "out")
    assert info.value.blame == REPOSITORY
    assert info.value.path and info.value.path in str(info.value)
    assert not (tmp_path / "evil").exists()


def test_a_link_through_a_link_out_of_the_tree_is_refused(tmp_path):
    """`l -> ..` stays inside, but `l2 -> l/..` leaves it on disk: refused, nothing written."""
    archive = make_tarball(tmp_path / "chain.tar.gz", [
        ({"name": "top/l", "type": tarfile.SYMTYPE, "linkname": ".."}, None),
        ({"name": "top/l2", "type": tarfile.SYMTYPE, "linkname": "l/.."}, None),
        ({"name": "top/l2/evil"}, b"x"),
    ])
    (tmp_path / "work").mkdir()
    with pytest.raises(SourceRefused, match="l2"):
        unpack_tarball(archive, tmp_path / "work" / "out")
    assert not (tmp_path / "work" / "evil").exists()


def test_too_many_entries_are_refused_naming_where(tmp_path):
    """Past the entry limit the repository is refused, naming the entry that passed it."""
    archive = github_layout(tmp_path / "many.tar.gz", {f"f{i}": b"" for i in range(10)})
    with pytest.raises(SourceRefused, match="more than 5 files") as info:
        unpack_tarball(archive, tmp_path / "out", max_members=5)
    assert info.value.path == "f4"
    assert info.value.blame == REPOSITORY


def test_links_inside_the_tree_are_kept(tmp_path):
    """A relative link that stays inside the repository is an ordinary part of it."""
    archive = make_tarball(
        tmp_path / "ok.tar.gz",
        [
            ({"name": "top/real.txt"}, b"hello"),
            ({"name": "top/alias.txt", "type": tarfile.SYMTYPE, "linkname": "real.txt"}, None),
        ],
    )
    root = unpack_tarball(archive, tmp_path / "out")
    assert (root / "alias.txt").read_text() == "hello"


def test_archive_over_the_size_cap_is_refused(tmp_path):
    """A tarball that unpacks past the cap is refused before it fills the disk."""
    archive = github_layout(tmp_path / "big.tar.gz", {"blob.bin": b"\0" * 200_000})
    with pytest.raises(SourceRefused, match="MiB") as info:
        unpack_tarball(archive, tmp_path / "out", max_unpacked_bytes=100_000)
    assert info.value.path == "blob.bin" and "blob.bin" in str(info.value)


def test_a_file_that_is_not_a_tarball_says_so(tmp_path):
    """A corrupt download is a clear error, not a traceback."""
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"<html>not a tarball</html>")
    with pytest.raises(SourceError, match="could not be read") as info:
        unpack_tarball(archive, tmp_path / "out")
    assert not isinstance(info.value, SourceRefused)
    assert info.value.blame == INFRASTRUCTURE
