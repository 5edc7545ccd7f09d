"""python -m builder build: the reference alone on stdout, one error line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from builder_helpers import BASE, make_context

pytestmark = pytest.mark.docker


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def test_build_prints_the_pushed_reference_alone(registry, published, unique_name, tmp_path):
    """Success: stdout is exactly the pushed reference, the log is on stderr, exit 0."""
    context = make_context(tmp_path / "ctx", BASE + "ARG WHO\nRUN echo \"hello $WHO\"\n")
    published.add(unique_name, "0.1.0")
    done = run_cli("build", "--service", unique_name, "--version", "0.1.0",
                   "--context", str(context), "--build-arg", "WHO=cli",
                   env={"REGISTRY": registry.address, "BUILD_NETWORK": "host"})
    assert done.returncode == 0, done.stderr
    digest = registry.manifest_digest(unique_name, "0.1.0")
    assert done.stdout == f"{registry.address}/{unique_name}:0.1.0@{digest}\n"
    assert "hello cli" in done.stderr.splitlines()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--service", "Orders", "--version", "1.0.0"], "Invalid service name 'Orders'"),
        (["--service", "orders", "--version", "1.0.0+b"], "Invalid version '1.0.0+b'"),
        (["--service", "orders", "--version", "1", "--type", "zip"], "Unknown artifact type"),
        (["--service", "orders", "--version", "1", "--context", "/nonexistent"], "does not exist"),
        (["--service", "orders", "--version", "1", "--build-arg", "=x"], "--build-arg"),
        (["--service", "orders"], "required: --version"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, says):
    """Bad input: nothing on stdout, one 'error: ...' line on stderr, exit 2."""
    done = run_cli("build", *args, env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert says in done.stderr


def test_engine_unreachable_exits_1(tmp_path):
    """No engine: one error line naming DOCKER_HOST, exit 1."""
    context = make_context(tmp_path / "ctx", BASE)
    done = run_cli("build", "--service", "orders", "--version", "1", "--context", str(context),
                   env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: No Docker engine answers at tcp://127.0.0.1:9")
    assert done.stderr.count("\n") == 1


def test_help_documents_every_option():
    """--help names every option of the build command."""
    done = run_cli("build", "--help")
    assert done.returncode == 0
    for option in ("--service", "--version", "--type", "--context", "--dockerfile",
                   "--registry", "--network", "--build-arg", "REGISTRY_USERNAME"):
        assert option in done.stdout
