"""Pruning: what Slipway keeps on the build host stays bounded.

- Build records and their logs (the store's chunks, and log files of older
  versions) older than RETENTION_DAYS go, except the latest build of each
  service (its badge and page stay); jobs left without builds go with them.
- Built images past KEEP_IMAGES per service go, and so do the images of
  failed builds. Only images Slipway built are looked at (the
  `dev.slipway.service` label builder puts on each), and only those of
  services this store knows: other tools sharing the engine keep theirs.
  Removing by tag leaves the layers a kept image still uses: the cache of
  the next build stays.
- Work folders that a crash left in DATA_DIR/work go at start.

`PruneRecords` is the store's side (a mixin of `JobStore`, plain SQL);
`Pruner` does the I/O and counts what it removed for /metrics.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .buildlog import log_path
from .records import FINISHED_BUILD_STATES, BuildState

log = logging.getLogger(__name__)

DAY = 86400.0
PRUNE_INTERVAL = 3600.0
_WORK_FOLDER = re.compile(r"job-(\d+)-")


@dataclass(frozen=True)
class StoredImageName:
    """A service's image as the store knows it: its name and the images of its successes."""

    name: str
    successes: tuple[str, ...]  # image ids of succeeded builds, newest build first
    building: bool  # a build of it runs now: its image may be half pushed


@dataclass
class PrunedBuilds:
    ids: list[int] = field(default_factory=list)
    logs: int = 0
    log_bytes: int = 0


class PruneRecords:
    """The store's part of pruning (mixed into `JobStore`)."""

    def prune_builds(self, *, older_than: float) -> PrunedBuilds:
        """Delete finished builds that finished before `older_than`, except each service's
        latest, with their logs (the store's chunks)."""
        finished = tuple(s.value for s in FINISHED_BUILD_STATES)
        marks = ", ".join("?" for _ in finished)
        pruned = PrunedBuilds()
        with self._write() as connection:
            rows = connection.execute(
                f"SELECT id FROM builds WHERE state IN ({marks}) AND finished_at < ?"
                " AND id NOT IN (SELECT max(id) FROM builds GROUP BY repository, service)",
                (*finished, older_than),
            ).fetchall()
            pruned.ids = [row[0] for row in rows]
            for start in range(0, len(pruned.ids), 500):
                chunk = pruned.ids[start:start + 500]
                where = f"build_id IN ({', '.join('?' for _ in chunk)})"
                logs = connection.execute(
                    f"SELECT count(DISTINCT build_id), sum(length(data)) FROM build_log_chunks"
                    f" WHERE {where}", chunk).fetchone()
                pruned.logs += int(logs[0] or 0)
                pruned.log_bytes += int(logs[1] or 0)
                connection.execute(f"DELETE FROM build_log_chunks WHERE {where}", chunk)
                connection.execute(
                    f"DELETE FROM builds WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)
        return pruned

    def prune_jobs(self, *, older_than: float) -> int:
        """Delete finished jobs older than `older_than` that have no build left."""
        with self._write() as connection:
            return connection.execute(
                "DELETE FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM builds WHERE builds.job_id = jobs.id)",
                (older_than,),
            ).rowcount

    def build_ids(self) -> set[int]:
        return {row[0] for row in self._connection().execute("SELECT id FROM builds")}

    def image_names(self) -> list[StoredImageName]:
        """Every image name this store's builds pushed or tried to, with its kept images."""
        names: dict[str, dict] = {}
        for row in self._connection().execute(
            "SELECT service, reference, image_id, state FROM builds ORDER BY id DESC"
        ):
            name = _image_name(row["reference"]) or row["service"]
            if not name:
                continue
            entry = names.setdefault(name, {"ids": [], "building": False})
            image_id = row["image_id"]
            if row["state"] == BuildState.SUCCEEDED.value and image_id \
                    and image_id not in entry["ids"]:
                entry["ids"].append(image_id)
            if row["state"] in (BuildState.QUEUED.value, BuildState.RUNNING.value):
                entry["building"] = True
        return [StoredImageName(name, tuple(e["ids"]), e["building"])
                for name, e in sorted(names.items())]

    def live_job_ids(self) -> set[int]:
        """Jobs some worker holds now (running with a live lease)."""
        return {row[0] for row in self._connection().execute(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_until >= ?", (self.clock(),))}


def _image_name(reference: str | None) -> str | None:
    """`orders` of `localhost:5000/orders:1.2.0@sha256:...` (the name under the registry)."""
    if not reference:
        return None
    without_digest = reference.split("@", 1)[0]
    repository = without_digest.rsplit(":", 1)[0] if ":" in without_digest.rsplit("/", 1)[-1] \
        else without_digest
    return repository.split("/", 1)[1] if "/" in repository else repository


@dataclass
class PruneReport:
    """What one pass removed, by kind."""

    removed: dict[str, int] = field(default_factory=dict)
    freed: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, count: int = 1, size: int = 0) -> None:
        if count:
            self.removed[what] = self.removed.get(what, 0) + count
        if size:
            self.freed[what] = self.freed.get(what, 0) + size


class Pruner:
    """Runs the pruning rules against one store, DATA_DIR and (optionally) one engine."""

    def __init__(self, config, store, *, metrics=None, images: bool = True, docker_client=None):
        """`images=False`: leave the engine alone (a host that does not build)."""
        self.config = config
        self.store = store
        self.metrics = metrics
        self.images = images
        self.docker_client = docker_client

    def run_once(self) -> PruneReport:
        """One pass of every rule; a rule that fails is logged and the others still run."""
        report = PruneReport()
        for rule in (self.prune_records, self.prune_images):
            try:
                rule(report)
            except Exception:  # pruning must never stop the worker
                log.exception("pruning: %s failed", rule.__name__)
        self._count(report)
        if report.removed:
            log.info("pruned %s", ", ".join(f"{n} {what}" for what, n in report.removed.items()))
        return report

    def prune_records(self, report: PruneReport) -> None:
        cutoff = self.store.clock() - self.config.retention_days * DAY
        pruned = self.store.prune_builds(older_than=cutoff)
        report.add("builds", len(pruned.ids))
        report.add("logs", pruned.logs, pruned.log_bytes)
        # Logs written as files (before they moved into the store) go too.
        for build_id in pruned.ids:
            self._remove_log(log_path(self.config.data_dir, build_id), report)
        report.add("jobs", self.store.prune_jobs(older_than=cutoff))
        # Logs whose record is gone (a crash between the two deletes) go too.
        logs = Path(self.config.data_dir) / "logs"
        if logs.is_dir():
            known = self.store.build_ids()
            for path in logs.glob("*.log"):
                if path.stem.isdigit() and int(path.stem) not in known \
                        and path.stat().st_mtime < cutoff:
                    self._remove_log(path, report)

    def _remove_log(self, path: Path, report: PruneReport) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        report.add("logs", 1, size)

    def prune_images(self, report: PruneReport) -> None:
        if not self.images:
            return
        from builder import engine

        with engine.opened(self.docker_client, settings=self.config.engine) as client:
            self._prune_images(client, report)

    def _prune_images(self, client, report: PruneReport) -> None:
        from builder import SERVICE_LABEL, engine

        for stored in self.store.image_names():
            if stored.building:
                continue
            images = engine.images_labelled(client, f"{SERVICE_LABEL}={stored.name}")
            here = {image.id for image in images}
            kept = [i for i in stored.successes if i in here][: self.config.keep_images]
            for image in images:
                if image.id in kept:
                    continue
                if engine.remove_image(client, image):
                    report.add("images", 1, image.size)

    def remove_work_folders(self) -> int:
        """Remove DATA_DIR/work folders of jobs no worker holds (left by a crash)."""
        root = Path(self.config.data_dir) / "work"
        if not root.is_dir():
            return 0
        live = self.store.live_job_ids()
        report = PruneReport()
        for folder in root.iterdir():
            match = _WORK_FOLDER.match(folder.name)
            if match and int(match.group(1)) in live:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            report.add("work_folders")
        self._count(report)
        return report.removed.get("work_folders", 0)

    def _count(self, report: PruneReport) -> None:
        if self.metrics is None:
            return
        for what, count in report.removed.items():
            self.metrics.pruned(what, count, report.freed.get(what, 0))


class PruneSchedule:
    """Prunes once at start, then every `interval` seconds, on a thread of its own."""

    def __init__(self, pruner: Pruner, *, interval: float = PRUNE_INTERVAL):
        self.pruner = pruner
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slipway-prune", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            self.pruner.run_once()
            if self._stop.wait(self.interval):
                return
