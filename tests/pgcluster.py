"""A PostgreSQL cluster of a test's own, which the test may stop and start.

    with postgres_cluster(listen=["127.0.0.1", "10.213.9.7"]) as cluster:
        cluster.url("10.213.9.7")        # postgresql://slipway:...@10.213.9.7:PORT/slipway
        cluster.restart()                # every connection drops; the data stays

Debian's `postgresql` binaries, run as the `postgres` user (initdb refuses
root) in a folder of its own under the test state folder (the postgres user
cannot enter pytest's tmp_path, which is root's only). scripts/test-env
starts the shared cluster the store's tests use; this one is for tests that
restart PostgreSQL under load.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("SLIPWAY_TEST_STATE", "/var/tmp/slipway-test-env"))
PASSWORD = "slipway-test"  # a test cluster's; never a real one


def _bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
    return found[-1]


def _as_postgres(argv: Sequence[str], **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                          text=True, check=True, **options)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql://slipway:{PASSWORD}@{host}:{self.port}/slipway"

    def start(self) -> None:
        _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                      "-w", "-t", "60", "start"], timeout=90)

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                      "stop"], timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()

    def psql(self, sql: str) -> str:
        return _as_postgres(["psql", "-h", str(self.folder), "-p", str(self.port), "-tAc", sql,
                             "postgres"], timeout=30).stdout


@contextlib.contextmanager
def postgres_cluster(*, listen: Sequence[str] = ("127.0.0.1",)) -> Iterator[Cluster]:
    """initdb, start, a `slipway` role and database; stopped and removed on exit."""
    STATE.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir=STATE))
    os.chmod(folder, 0o755)
    shutil.chown(folder, "postgres")
    cluster = Cluster(folder, _free_port())
    pwfile = folder / "pwfile"
    pwfile.write_text(PASSWORD)
    shutil.chown(pwfile, "postgres")
    _as_postgres([_bin("initdb"), "-D", str(cluster.data), "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                  "-E", "UTF8", "--locale=C.UTF-8"], timeout=120)
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '{','.join(listen)}'\nport = {cluster.port}\n"
                   f"unix_socket_directories = '{folder}'\nmax_connections = 200\n"
                   "fsync = off\n")
    with open(cluster.data / "pg_hba.conf", "a") as hba:
        # The build hosts' namespaces reach it through their veth links.
        hba.write("host all all 10.213.0.0/16 scram-sha-256\n")
    cluster.start()
    try:
        cluster.psql(f"CREATE ROLE slipway LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("CREATE DATABASE slipway OWNER slipway")
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
