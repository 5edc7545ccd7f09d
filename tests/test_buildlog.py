"""Build logs on disk: live reading by offset, tail, the size cap and redaction."""

from __future__ import annotations

import threading

import pytest

from github_app.buildlog import REDACTED, BuildLogFile, log_path, redact

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----\n"
)


def test_lines_are_written_to_the_build_s_file(data_dir):
    """append() writes under DATA_DIR/logs/<id>.log, one line per call, newline added."""
    with BuildLogFile(data_dir, 42) as log:
        assert log.append("Step 1/5 : FROM python:3.11-slim")
        assert log.append("Step 2/5 : COPY . /app\n")

    assert log.path == data_dir / "logs" / "42.log" == log_path(data_dir, 42)
    assert log.path.read_text() == "Step 1/5 : FROM python:3.11-slim\nStep 2/5 : COPY . /app\n"


def test_a_reader_sees_each_line_as_soon_as_it_is_appended(data_dir):
    """A page following the log live gets every line once, in order, by offset."""
    log = BuildLogFile(data_dir, 1)
    reader = BuildLogFile(data_dir, 1)  # the web process opens its own
    assert reader.read() == ("", 0)

    log.append("one")
    text, offset = reader.read()
    assert (text, offset) == ("one\n", 4)
    assert reader.read(offset) == ("", 4)

    log.append("two")
    log.append("three")
    text, offset = reader.read(offset)
    assert (text, offset) == ("two\nthree\n", 14)
    log.close()


def test_read_with_a_limit_never_splits_a_line_or_a_character(data_dir):
    """Limited reads stop at a line end; a line longer than the limit comes in pieces of whole
    UTF-8 characters."""
    with BuildLogFile(data_dir, 1) as log:
        log.append("short")
        log.append("é" * 10)  # 20 bytes
        log.append("end")

    assert log.read(0, limit=10) == ("short\n", 6)
    pieces, offset = [], 6
    while offset < log.size():
        text, offset = log.read(offset, limit=7)
        pieces.append(text)
    assert "".join(pieces) == "é" * 10 + "\nend\n"
    assert pieces[0] == "ééé"


def test_tail_returns_whole_lines_from_the_end(data_dir):
    with BuildLogFile(data_dir, 1) as log:
        for n in range(100):
            log.append(f"line {n:03}")

    assert log.tail(20) == "line 098\nline 099\n"
    assert log.tail(10_000).startswith("line 000\n")
    assert BuildLogFile(data_dir, 2).tail(100) == ""


def test_tail_of_one_long_line_starts_at_a_character(data_dir):
    with BuildLogFile(data_dir, 1) as log:
        log.append("ü" * 100)
    tail = log.tail(11)
    assert tail == "ü" * 5 + "\n"


def test_a_log_stops_at_its_cap_with_one_marker(data_dir):
    """Past the cap the log ends with one truncation line and drops what follows, even after
    the worker reopens it."""
    with BuildLogFile(data_dir, 1, max_bytes=1000) as log:
        written = [log.append(f"{n:09}") for n in range(200)]  # 10 bytes a line
        assert log.truncated

    assert log.size() <= 1000
    lines = log.path.read_text().splitlines()
    assert lines[-1].startswith("[log truncated: ")
    assert sum(line.startswith("[log truncated") for line in lines) == 1
    assert lines[:-1] == [f"{n:09}" for n in range(len(lines) - 1)]
    assert written.count(True) == len(lines) - 1

    with BuildLogFile(data_dir, 1, max_bytes=1000) as reopened:
        assert reopened.truncated
        assert not reopened.append("after a restart")
    assert log.path.read_text().splitlines() == lines


def test_the_default_cap_is_50_mib(data_dir):
    assert BuildLogFile(data_dir, 1).max_bytes == 50 * 1024 * 1024


def test_secrets_never_reach_the_file(data_dir):
    """The registry password, in plain and URL-encoded form, and the lines of a PEM key are
    redacted before they are written."""
    secrets = ["p@ss:word!", PEM, None, ""]
    with BuildLogFile(data_dir, 1, secrets=secrets) as log:
        log.append("login with p@ss:word! ok")
        log.append("pushing to https://bot:p%40ss%3Aword%21@registry.example")
        for line in PEM.splitlines():
            log.append(f"echo {line}")
        log.append(f"whole key: {PEM}")

    text = log.path.read_text()
    assert "p@ss:word!" not in text
    assert "p%40ss" not in text
    assert "MIIEowIBAAKCAQEA" not in text
    assert "VTLw7onLRnrq" not in text
    assert "login with [REDACTED] ok" in text
    assert "https://bot:[REDACTED]@registry.example" in text


def test_redact_replaces_every_secret_longest_first():
    assert redact("token abc and abcdef", ["abc", "abcdef"]) == f"token {REDACTED} and {REDACTED}"
    assert redact("nothing here", []) == "nothing here"
    assert redact("key=" + PEM.replace("\n", "\\n"), [PEM]) == f"key={REDACTED}"


def test_appends_from_threads_keep_lines_whole(data_dir):
    """Build output and worker messages from two threads never interleave inside a line."""
    log = BuildLogFile(data_dir, 1)

    def write(tag):
        for n in range(500):
            log.append(f"{tag} {n} " + tag * 50)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()

    lines = log.path.read_text().splitlines()
    assert len(lines) == 1000
    assert all(line.endswith(line[0] * 50) for line in lines)


def test_a_build_id_cannot_name_a_path_outside_the_logs(data_dir):
    with pytest.raises(ValueError):
        BuildLogFile(data_dir, "../../etc/passwd")
