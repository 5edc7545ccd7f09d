"""The pure part of the builder: names, tags, stream chunks, log lines. No Docker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import builder
from builder import errors, oci_labels
from builder.logtail import LineSplitter, LogTail
from builder.references import (
    classify_push_error,
    dockerfile_with_labels,
    image_name_for,
    killed,
    out_of_memory_message,
    parse_build_chunk,
    parse_push_chunk,
    push_failed,
    step_of,
    validate_service_name,
    validate_version,
)


@pytest.mark.parametrize(
    "name", ["orders", "acme/orders", "my.app", "a_b", "a__b", "a--b", "x1/y-2/z.3", "0"]
)
def test_valid_service_names_pass(name):
    """Names Docker accepts are accepted unchanged."""
    assert validate_service_name(name, "localhost:5000") == name


@pytest.mark.parametrize("name", ["Orders", "a/", "/a", "a..b", "a_", "a b", "é", "a:b", "a___b"])
def test_invalid_service_names_fail_with_the_rule(name):
    """Names Docker refuses raise InvalidReference quoting the name and the rule."""
    with pytest.raises(errors.InvalidReference, match="lowercase") as caught:
        validate_service_name(name)
    assert repr(name) in str(caught.value) and caught.value.value == name


def test_service_name_too_long_with_registry():
    """A name over 255 characters with its registry is refused with the count."""
    with pytest.raises(errors.InvalidReference, match="at most 255"):
        validate_service_name("a" * 250, "localhost:5000")


@pytest.mark.parametrize("version", ["1.0.0", "v1.2.3", "latest", "1.2.3-rc.1", "_x", "a" * 128])
def test_valid_versions_pass(version):
    """Docker tags are accepted unchanged."""
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["", ".1", "-1", "1+2", "a" * 129, "1.0 ", "1/2"])
def test_invalid_versions_fail_with_the_rule(version):
    """Anything that is not a Docker tag raises InvalidReference quoting it and the rule."""
    with pytest.raises(errors.InvalidReference, match="Docker tag") as caught:
        validate_version(version)
    assert repr(version) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Hello-World", "hello-world"),
        ("My Repo!", "my-repo"),
        ("--weird..name__", "weird-name"),
        ("a__b", "a__b"),
        ("dots.and_under", "dots.and_under"),
        ("Org/Repo.JS", "org/repo.js"),
        ("ünïcode", "n-code"),
    ],
)
def test_image_name_for_makes_any_repository_name_valid(text, name):
    """image_name_for turns repository names into valid image names."""
    assert image_name_for(text) == name
    assert validate_service_name(image_name_for(text)) == name


def test_image_name_for_refuses_names_without_letters():
    """A name with no letters or digits cannot become an image name."""
    with pytest.raises(errors.InvalidReference, match="no letters or digits"):
        image_name_for("---")


def test_push_stream_digest_comes_from_the_aux_chunk():
    """The aux chunk carries the digest and size; progress bars are not log lines."""
    aux = parse_push_chunk({"progressDetail": {}, "aux": {"Tag": "1", "Digest": "sha256:ab",
                                                          "Size": 736}})
    assert (aux.digest, aux.size, aux.error) == ("sha256:ab", 736, None)
    bar = parse_push_chunk({"status": "Pushing", "progress": "[=>  ]", "id": "abc"})
    assert bar.text == ""
    done = parse_push_chunk({"status": "Pushed", "progressDetail": {}, "id": "abc"})
    assert done.text == "abc: Pushed\n"


def test_push_stream_error_chunk_is_an_error():
    """An error chunk inside the 200 stream is read as a failure."""
    chunk = {"errorDetail": {"message": "unauthorized: authentication required"},
             "error": "unauthorized: authentication required"}
    assert parse_push_chunk(chunk).error == "unauthorized: authentication required"


@pytest.mark.parametrize(
    ("detail", "reason", "says"),
    [
        ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
         "unreachable", "is unreachable"),
        ('Get "https://r.example:5000/v2/": http: server gave HTTP response to HTTPS client',
         "unreachable", "insecure-registries"),
        ("unauthorized: authentication required", "auth", "REGISTRY_USERNAME"),
        ("denied: requested access to the resource is denied", "auth", "REGISTRY_PASSWORD"),
        ("blob upload invalid", "refused", "rejected the push"),
    ],
)
def test_push_failures_say_which_and_what_to_do(detail, reason, says):
    """PushFailed names the cause (unreachable, auth, refused) and the fix."""
    assert classify_push_error(detail) == reason
    error = push_failed("r:5000/orders:1", "r:5000", detail)
    assert error.reason == reason and says in str(error) and "r:5000/orders:1" in str(error)
    assert error.detail == detail and error.blame == "infrastructure"


def test_build_stream_chunks():
    """Text, the image id and errors are told apart in the build stream."""
    assert parse_build_chunk({"stream": "Step 1/2 : FROM x\n"}).text == "Step 1/2 : FROM x\n"
    assert parse_build_chunk({"aux": {"ID": "sha256:1"}}).image_id == "sha256:1"
    failed = parse_build_chunk({"errorDetail": {"code": 2, "message": "boom"}, "error": "boom"})
    assert failed.error == "boom"
    assert step_of("Step 3/5 : RUN pip install -r requirements.txt") == \
        "Step 3/5 : RUN pip install -r requirements.txt"
    assert step_of(" ---> Running in abc") is None


def test_dockerfile_gets_one_label_instruction_with_safe_quoting():
    """Labels become one LABEL line; quotes, '$' and the escape character are escaped."""
    text = dockerfile_with_labels("FROM x\nRUN a \\\n  b", {"k": 'say "hi" $HOME \\'})
    assert text == 'FROM x\nRUN a \\\n  b\nLABEL "k"="say \\"hi\\" \\$HOME \\\\"\n'
    backtick = dockerfile_with_labels("# escape=`\nFROM x\n", {"k": 'a"b'})
    assert backtick.endswith('LABEL "k"="a`"b"\n')
    assert dockerfile_with_labels("FROM x\n", {}) == "FROM x\n"


def test_oci_labels_are_rfc3339_utc():
    """created is RFC 3339 in UTC; revision and source only when given."""
    when = datetime(2024, 5, 1, 14, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert oci_labels("1.0.0", when) == {
        "org.opencontainers.image.version": "1.0.0",
        "org.opencontainers.image.created": "2024-05-01T12:30:05Z",
    }
    labels = oci_labels("1", datetime.now(UTC), revision="abc", source="https://x")
    assert labels["org.opencontainers.image.revision"] == "abc"
    assert labels["org.opencontainers.image.source"] == "https://x"


def test_line_splitter_joins_pieces_and_cuts_huge_lines():
    """Pieces become whole lines; a line over the cap is cut and says how much was dropped."""
    splitter = LineSplitter(max_line=10)
    lines = list(splitter.feed("ab")) + list(splitter.feed("c\r\nde")) + list(splitter.feed(
        "f" * 30 + "\nlast"))
    lines += list(splitter.flush())
    assert lines == ["abc", "deffffffff [... 22 more characters cut]", "last"]


def test_log_tail_keeps_only_the_end():
    """The tail holds at most its size, as whole lines, ending with the last line."""
    tail = LogTail(max_chars=100)
    for n in range(1000):
        tail.append(f"line {n}")
    assert len(tail.text()) <= 100 and tail.text().endswith("line 999\n")
    assert tail.text().startswith("line ")


def test_every_error_has_a_blame_and_is_exported():
    """Each error class says whose fault it is and is importable from builder."""
    classes = [getattr(builder, name) for name in builder.__all__
               if isinstance(getattr(builder, name), type)
               and issubclass(getattr(builder, name), Exception)]
    assert len(classes) == 18
    for cls in classes:
        assert issubclass(cls, builder.BuilderError)
        assert cls.blame in ("repository", "infrastructure")
    assert builder.BuildFailed.blame == "repository"
    assert builder.PushFailed.blame == "infrastructure"
    assert builder.BuildTimedOut.blame == builder.BuildOutOfMemory.blame == "repository"


def test_exit_code_137_is_read_as_killed():
    """The classic builder's words for a step ended by SIGKILL, and only those."""
    assert killed("The command '/bin/sh -c make' returned a non-zero code: 137")
    assert not killed("The command '/bin/sh -c make' returned a non-zero code: 1")
    assert not killed("The command '/bin/sh -c make' returned a non-zero code: 1370")
    assert "64 MiB" in out_of_memory_message("Step 2/3 : RUN make", 64 * 1024**2)
