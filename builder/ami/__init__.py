"""``type: ami``: the service's Dockerfile becomes a bootable disk, registered as an AMI.

Phase by phase (docs/ami.md tells the whole story):

1. preflight: the disk tools, AWS credentials and region, and the AMI name
   (``<service>-<version>``): the same revision returns the AMI that exists,
   another revision is refused. Nothing is built before this passes.
2. docker build: the Dockerfile, as for ``type: docker`` (the image stays local
   unless ``push``); its base must be Debian or Ubuntu.
3. bootable layer: a second build FROM that image adds a Debian cloud kernel, an
   initramfs, systemd and systemd-boot.
4. disk: its files become a GPT disk (FAT32 ESP, ext4 root) with a systemd unit
   that runs the image's entrypoint; no loop device, no mount.
5. upload: the non-zero 512 KiB blocks go to a new EBS snapshot (EBS direct APIs).
6. register: RegisterImage (hvm, UEFI, ENA, x86_64), tagged version, revision, source.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from builder.ami import bootable, disk, layout
from builder.errors import AmiVersionTaken, InvalidReference

PHASES = ("docker build", "bootable layer", "disk", "upload", "register")
_AMI_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789()[] ./-'@_")


@dataclass(frozen=True)
class AmiResult:
    """What was registered. ``existing`` is True when the AMI of this revision was already
    there and nothing was built."""

    service: str
    version: str
    name: str
    image_id: str
    region: str
    snapshot_id: str
    docker_image: str
    disk_bytes: int
    uploaded_bytes: int
    phases: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    log_tail: str = ""
    existing: bool = False

    @property
    def reference(self) -> str:
        """``ami-0123456789abcdef0 (eu-west-1)``: what a check run and a build page show."""
        return f"{self.image_id} ({self.region})"

    @property
    def digest(self) -> str:
        """What identifies the content: the snapshot (a BuildResult's registry digest)."""
        return self.snapshot_id

    @property
    def size(self) -> int:
        return self.disk_bytes


def ami_name(service: str, version: str) -> str:
    """``<service>-<version>``, checked against EC2's rules for AMI names."""
    name = f"{service}-{version}"
    bad = sorted(set(name) - _AMI_NAME_CHARS)
    if not 3 <= len(name) <= 128 or bad:
        raise InvalidReference(
            f"The AMI name {name!r} is not valid: EC2 takes 3 to 128 letters, digits and "
            f"( ) [ ] . / - ' @ _ or spaces; shorten the service name or the version.",
            value=name,
        )
    return name


def ami_tags(version: str, revision: str | None, source: str | None) -> dict[str, str]:
    tags = {"version": version}
    if revision:
        tags["revision"] = revision
    if source:
        tags["source"] = source
    return tags


def check_existing(existing, *, name: str, revision: str | None) -> bool:
    """True when ``existing`` (an ebs.ExistingImage or None) is this revision's AMI;
    raise AmiVersionTaken when the name belongs to another revision."""
    if existing is None:
        return False
    if revision and existing.revision == revision and existing.state not in (
            "failed", "error", "invalid", "deregistered"):
        return True
    owner = existing.revision or "no recorded revision"
    raise AmiVersionTaken(
        f"The AMI {name} already exists ({existing.image_id}, {existing.state}), built from "
        f"{owner}; versions are immutable: give this change a new version"
        + (", or deregister the failed AMI" if existing.state == "failed" else "") + ".",
        name=name, image_id=existing.image_id, revision=existing.revision,
    )


class _Phases:
    def __init__(self, log):
        self.times: dict[str, float] = {}
        self.log = log

    def run(self, name: str, work: Callable):
        self.log.write(f"==> ami: {name}\n")
        started = time.monotonic()
        try:
            return work()
        finally:
            self.times[name] = round(time.monotonic() - started, 2)
            self.log.write(f"==> ami: {name} took {self.times[name]:.1f} s\n")


def build_ami(
    service_name: str,
    version: str,
    *,
    context_dir: str,
    dockerfile_path: str,
    tag: str,
    image_labels: dict[str, str],
    network: str | None,
    build_args: Mapping[str, str] | None,
    on_log: Callable[[str], None] | None,
    revision: str | None,
    source: str | None,
    docker_client=None,
    engine_settings=None,
    nocache: bool = False,
    memory: int | None = None,
    timeout: float | None = None,
    cancel=None,
    push: Callable[[object, object], None] | None = None,
    work_dir: str | None = None,
    disk_path: str | None = None,
    aws_session=None,
) -> AmiResult:
    """Build, assemble, upload and register; see the module's docstring for the phases.

    ``timeout`` and ``cancel`` stop it as they stop a Docker build: in the engine
    during the two builds, between blocks during the upload (whose snapshot is
    then deleted).
    """
    started = time.monotonic()
    name = ami_name(service_name, version)
    tags = ami_tags(version, revision, source)
    description = f"{service_name} {version} built by Slipway" + (
        f" from {revision[:12]}" if revision else "")

    # Imported here: bad input is refused even where boto3 or the docker SDK is absent.
    from builder import engine
    from builder.ami import ebs
    from builder.cancel import CANCELLED, TIMED_OUT, stoppable

    disk.check_tools()
    aws = ebs.connect(aws_session)
    log = engine.BuildOutput(on_log)
    existing = ebs.find_image(aws, name)
    if check_existing(existing, name=name, revision=revision):
        log.write(f"==> ami: {name} is already registered from {revision}: "
                  f"{existing.image_id} ({aws.region})\n")
        log.close()
        return AmiResult(service=service_name, version=version, name=name,
                         image_id=existing.image_id, region=aws.region,
                         snapshot_id=existing.tags.get("snapshot", ""), docker_image=tag,
                         disk_bytes=0, uploaded_bytes=0, duration=time.monotonic() - started,
                         log_tail=log.tail.text(), existing=True)

    phases = _Phases(log)
    work = tempfile.mkdtemp(prefix="slipway-ami-", dir=work_dir)
    path = disk_path or os.path.join(work, "disk.raw")
    try:
        with (engine.opened(docker_client, settings=engine_settings) as client,
              stoppable(client, cancel=cancel, timeout=timeout) as stop):
            try:
                _check_base_first(client, dockerfile_path)
                plan = _docker_phases(
                    client, phases, log, work=work, path=path, name=name, revision=revision,
                    context_dir=context_dir, dockerfile_path=dockerfile_path, tag=tag,
                    image_labels=image_labels, network=network, build_args=build_args,
                    nocache=nocache, memory=memory, push=push)
            except Exception as exc:
                _stopped(stop.reason, timeout, log, cause=exc)
                raise
            _stopped(stop.reason, timeout, log)

        def should_stop() -> None:
            if cancel is not None and cancel.is_set():
                _stopped(CANCELLED, timeout, log)
            if timeout is not None and time.monotonic() - started > timeout:
                _stopped(TIMED_OUT, timeout, log)

        upload = phases.run("upload", lambda: ebs.upload_snapshot(
            aws, path, size_gib=plan.gib, description=description,
            tags={**tags, "Name": name}, before_block=should_stop))
        log.write(f"==> ami: snapshot {upload.snapshot_id}: {upload.blocks} blocks, "
                  f"{upload.bytes / layout.MiB:.0f} MiB of a {plan.gib} GiB disk\n")

        def register():
            try:
                return ebs.register_image(aws, name=name, snapshot_id=upload.snapshot_id,
                                          size_gib=plan.gib, description=description,
                                          tags={**tags, "snapshot": upload.snapshot_id})
            except BaseException:
                ebs.delete_snapshot(aws, upload.snapshot_id)
                raise

        image_id = phases.run("register", register)
        log.write(f"==> ami: registered {image_id} in {aws.region}\n")
        log.close()
        return AmiResult(
            service=service_name, version=version, name=name, image_id=image_id,
            region=aws.region, snapshot_id=upload.snapshot_id, docker_image=tag,
            disk_bytes=plan.size, uploaded_bytes=upload.bytes, phases=phases.times,
            duration=time.monotonic() - started, log_tail=log.tail.text(),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_base_first(client, dockerfile_path: str) -> None:
    """Refuse a base that is not Debian or Ubuntu before building, when the engine holds
    the image the Dockerfile's last stage starts from (the build checks it again)."""
    from builder import engine

    with open(dockerfile_path, encoding="utf-8") as f:
        base = bootable.final_base(f.read())
    if base is None:
        return
    if base.lower() == "scratch":
        bootable.distribution_of(None, image="scratch")
    if engine.has_image(client, base):
        bootable.distribution_of(engine.read_image_file(client, base, "/etc/os-release"),
                                 image=base)


def _stopped(reason: str | None, timeout: float | None, log, *, cause=None) -> None:
    """Raise BuildTimedOut or BuildCancelled when the build was stopped, as for docker."""
    from builder import _raise_if_stopped
    from builder.cancel import Stop

    _raise_if_stopped(Stop(reason), timeout, log, cause=cause)


def _docker_phases(client, phases: _Phases, log, *, work: str, path: str, name: str,
                   revision: str | None, context_dir: str, dockerfile_path: str, tag: str,
                   image_labels: dict[str, str], network: str | None, build_args,
                   nocache: bool, memory: int | None, push) -> layout.DiskLayout:
    """The phases that need the engine: docker build, bootable layer, disk."""
    from builder import engine

    def docker_build():
        image = engine.build_image(
            client, context=context_dir, dockerfile=dockerfile_path, tag=tag,
            build_args=dict(build_args or {}), labels=image_labels, network=network,
            nocache=nocache, log=log, memory=memory)
        distribution = bootable.distribution_of(
            engine.read_image_file(client, image.id, "/etc/os-release"), image=tag)
        if push is not None:
            push(client, log)
        return image, distribution

    image, distribution = phases.run("docker build", docker_build)
    config = bootable.ImageConfig.from_inspect(engine.image_config(client, image.id))

    def bootable_layer():
        context = os.path.join(work, "bootable")
        os.makedirs(context)
        with open(os.path.join(context, "Dockerfile"), "w", encoding="utf-8") as f:
            f.write(bootable.bootable_dockerfile(image.id, distribution))
        return engine.build_image(
            client, context=context, dockerfile=os.path.join(context, "Dockerfile"),
            tag=f"{tag}-bootable", build_args=None, labels=image_labels, network=network,
            nocache=nocache, log=log, memory=memory)

    boot_image = phases.run("bootable layer", bootable_layer)
    return phases.run("disk", lambda: _make_disk(
        client, boot_image.id, config, path, work=work, name=name,
        seed=f"{name}:{revision or ''}", log=log))


def _make_disk(client, image_id: str, config: bootable.ImageConfig, path: str, *, work: str,
               name: str, seed: str, log) -> layout.DiskLayout:
    from builder import engine

    root = os.path.join(work, "root")
    os.makedirs(root)
    with engine.exported_files(client, image_id) as stream:
        owners = disk.extract_rootfs(stream, root)
    unit = bootable.service_unit(config, description=f"{name} (Slipway)",
                                 is_executable=disk.is_executable_in(root))
    boot = disk.find_boot_files(root)
    sizes, folders = disk.measure_tree(root)
    content = layout.ext4_content_bytes(sizes, folders=folders)
    plan = layout.plan_disk(content, boot.size, seed=seed)
    disk.configure_rootfs(root, unit=unit, hostname=bootable.hostname_for(name), disk=plan)
    disk.assemble(path, root, boot, plan, work=work, owners=owners)
    log.write(f"==> ami: disk {plan.gib} GiB: root {content / layout.MiB:.0f} MiB of files, "
              f"at least {layout.root_free_margin(content) / layout.MiB:.0f} MiB free\n")
    shutil.rmtree(root, ignore_errors=True)
    return plan
