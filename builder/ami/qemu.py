"""Boot a raw disk locally in QEMU, as EC2 boots it: UEFI (OVMF), NVMe, one NIC.

For the tests, the benchmark and an operator who wants to try a disk before
it goes to AWS (``build_artifact(..., disk_path=...)`` keeps it). Not used by
the build itself. TCG by default: ``SLIPWAY_QEMU_ACCEL=kvm`` where KVM works.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(disk: str, vars_file: str, console: str, *, host_port: int, guest_port: int,
                 accel: str, memory_mib: int = 1024, cpus: int = 2) -> list[str]:
    """The command line: q35, OVMF as pflash, the disk on NVMe (as on Nitro instances), the
    service's port forwarded from 127.0.0.1. The disk is opened read-only (``snapshot=on``)."""
    cpu = "host" if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64",
        "-machine", f"q35,accel={accel}",
        "-cpu", cpu, "-smp", str(cpus), "-m", str(memory_mib),
        # No default CD-ROM, floppy or VGA: the firmware tries nothing before the disk.
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={vars_file}",
        "-drive", f"if=none,id=root,format=raw,file={disk},snapshot=on",
        "-device", "nvme,serial=slipway-root,drive=root",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}",
        "-device", "virtio-net-pci,netdev=net0",
    ]


@dataclass
class Machine:
    """A running QEMU; ``console`` is the serial console's text so far."""

    process: subprocess.Popen
    host_port: int
    console_path: str
    workdir: str
    started: float = field(default_factory=time.monotonic)

    @property
    def console(self) -> str:
        try:
            with open(self.console_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_http(self, path: str, *, timeout: float) -> tuple[int, bytes, float]:
        """Poll ``http://127.0.0.1:PORT/path`` until it answers 200; return status, body and
        the seconds since QEMU started. Raise TimeoutError with the console's tail."""
        url = f"http://127.0.0.1:{self.host_port}{path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.process.returncode}):\n"
                                   f"{self.console[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    return answer.status, answer.read(), time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; the console "
                           f"ends with:\n{self.console[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def boot(disk: str, *, guest_port: int, accel: str | None = None) -> Machine:
    """Start QEMU on ``disk``; the guest's ``guest_port`` answers on 127.0.0.1:host_port."""
    accel = accel or os.environ.get("SLIPWAY_QEMU_ACCEL") or "tcg"
    workdir = tempfile.mkdtemp(prefix="slipway-qemu-")
    vars_file = os.path.join(workdir, "OVMF_VARS.fd")
    shutil.copyfile(OVMF_VARS, vars_file)  # UEFI writes its variables: each boot its own copy
    console = os.path.join(workdir, "console.log")
    port = free_port()
    command = qemu_command(disk, vars_file, console, host_port=port, guest_port=guest_port,
                           accel=accel)
    with open(os.path.join(workdir, "qemu.err"), "wb") as errors:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=errors)
    return Machine(process, port, console, workdir)
