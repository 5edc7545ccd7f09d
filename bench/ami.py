"""How long does `type: ami` take for the microservice, and how much of the disk goes up?

One build of ``microservice/`` as an AMI against moto's server on loopback (the
EBS direct APIs and EC2, as in the tests), then a boot of the kept disk in QEMU
until ``GET /health`` answers from inside the machine. It prints:

* the time of each phase: docker build, bootable layer, disk assembly, upload to
  moto, register;
* the disk's size against the bytes actually uploaded (non-zero 512 KiB blocks);
* boot-to-health: from QEMU's start to the first 200 of ``/health`` (TCG unless
  ``SLIPWAY_QEMU_ACCEL=kvm``).

Its last line is ``ami: disk D MiB, uploaded U MiB, total T s, boot-to-health H s``
(total: the whole ``build_artifact`` call, without the boot).

Run it from the repository root with the engine up (``bash scripts/test-env``)::

    DOCKER_API_VERSION=1.41 python3 bench/ami.py
    python3 bench/ami.py --no-cache          # the Docker builds from scratch
    python3 bench/ami.py --no-boot           # the build only

It removes the images it built and stops moto and QEMU by pid at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_aws import MotoServer, aws_environment  # noqa: E402

from builder import build_artifact  # noqa: E402
from builder.ami import qemu  # noqa: E402

MiB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", default=str(ROOT / "microservice"))
    parser.add_argument("--port", type=int, default=8000, help="the service's port in the VM")
    parser.add_argument("--network", default="host")
    parser.add_argument("--no-cache", action="store_true", dest="nocache")
    parser.add_argument("--no-boot", action="store_true", dest="no_boot")
    parser.add_argument("--boot-timeout", type=float, default=900)
    args = parser.parse_args()

    moto = MotoServer()
    os.environ.update(aws_environment(moto.url))
    service = f"bench-ami-{uuid.uuid4().hex[:8]}"
    result = None
    try:
        with tempfile.TemporaryDirectory(prefix="slipway-bench-ami-", dir="/var/tmp") as work:
            disk = os.path.join(work, "disk.raw")
            started = time.monotonic()
            result = build_artifact(
                service, "1.0.0", "ami", context=args.context, registry="127.0.0.1:5000",
                network=args.network, revision="b" * 40, source="bench",
                nocache=args.nocache, disk_path=disk, work_dir=work,
                on_log=lambda line: None,
            )
            total = time.monotonic() - started
            print(f"AMI {result.image_id} in {result.region}, snapshot {result.snapshot_id}")
            for phase, seconds in result.phases.items():
                print(f"  {phase:<15} {seconds:7.1f} s")
            print(f"  {'total':<15} {total:7.1f} s")
            disk_mib = result.disk_bytes / MiB
            uploaded_mib = result.uploaded_bytes / MiB
            print(f"disk {disk_mib:.0f} MiB, uploaded {uploaded_mib:.0f} MiB "
                  f"({100 * result.uploaded_bytes / result.disk_bytes:.0f} % of the disk; "
                  f"allocated in the sparse file: {os.stat(disk).st_blocks * 512 / MiB:.0f} MiB)")
            boot = float("nan")
            if not args.no_boot:
                accel = os.environ.get("SLIPWAY_QEMU_ACCEL") or "tcg"
                with qemu.boot(disk, guest_port=args.port) as machine:
                    _, _, boot = machine.wait_for_http("/health", timeout=args.boot_timeout)
                print(f"boot-to-health ({accel}): {boot:.1f} s")
    finally:
        moto.stop()
        if result is not None:
            import docker
            client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION", "1.41"))
            for tag in (result.docker_image, f"{result.docker_image}-bootable"):
                with contextlib.suppress(Exception):
                    client.images.remove(tag, force=True)
    print(f"ami: disk {disk_mib:.0f} MiB, uploaded {uploaded_mib:.0f} MiB, "
          f"total {total:.0f} s, boot-to-health {boot:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
