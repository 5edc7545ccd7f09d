"""`type: ami` end to end, without AWS: the microservice's Dockerfile becomes a disk that
boots in QEMU (UEFI, NVMe) and answers GET /health, and an AMI registered in moto whose
snapshot holds the disk's blocks byte for byte.

One build serves the module (about a minute: two Docker builds, the disk, the upload);
the boot takes about a minute more under TCG (SLIPWAY_QEMU_ACCEL=kvm where KVM works).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path

import boto3
import pytest
from builder_helpers import make_context
from fake_aws import aws_environment

from builder import AmiResult, AmiVersionTaken, UnsupportedBaseImage, build_artifact
from builder.ami import qemu
from builder.ami.blocks import nonzero_blocks

pytestmark = pytest.mark.docker

MICROSERVICE = Path(__file__).resolve().parent.parent / "microservice"
REVISION = "1f" * 20
# Under TCG the boot takes about a minute on a quiet 2-core machine, and took 315 s at a
# load average of 16 with another QEMU running; pytest's own limit is 600 s a test.
BOOT_TIMEOUT = 540


@pytest.fixture(scope="module")
def aws(moto):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in aws_environment(moto.url).items():
            patch.setenv(key, value)
        yield moto


@pytest.fixture(scope="module")
def built(aws, docker_client, tmp_path_factory):
    """One AMI build of the microservice, its disk kept for the tests to read and boot."""
    service = f"ami-test-{uuid.uuid4().hex[:8]}"
    disk = tmp_path_factory.mktemp("ami") / "disk.raw"
    lines = []
    result = build_artifact(
        service, "1.0.0", "ami", context=str(MICROSERVICE), registry="127.0.0.1:5000",
        network="host", revision=REVISION, source="https://github.com/acme/orders",
        on_log=lines.append, docker_client=docker_client, disk_path=str(disk),
    )
    yield result, disk, lines
    for tag in (result.docker_image, f"{result.docker_image}-bootable"):
        with contextlib.suppress(Exception):  # never built, or already gone
            docker_client.images.remove(tag, force=True)


def clients(moto):
    options = dict(endpoint_url=moto.url, region_name="eu-west-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
    return boto3.client("ebs", **options), boto3.client("ec2", **options)


def test_the_build_returns_the_ami_id_region_snapshot_and_phase_times(built):
    result, disk, lines = built
    assert isinstance(result, AmiResult)
    assert result.image_id.startswith("ami-") and result.region == "eu-west-1"
    assert result.snapshot_id.startswith("snap-")
    assert list(result.phases) == ["docker build", "bootable layer", "disk", "upload",
                                   "register"]
    assert result.disk_bytes % (1 << 30) == 0 and result.disk_bytes == disk.stat().st_size
    assert 0 < result.uploaded_bytes < result.disk_bytes
    assert any(f"registered {result.image_id}" in line for line in lines)


def test_the_snapshot_holds_the_disks_nonzero_blocks_byte_for_byte(built, aws):
    """GetSnapshotBlock of every block equals the disk's non-zero 512 KiB blocks, and no
    other block was written."""
    result, disk, _ = built
    ebs, _ = clients(aws)
    listed, token = {}, None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=result.snapshot_id,
                                        **({"NextToken": token} if token else {}))
        listed.update({b["BlockIndex"]: b["BlockToken"] for b in page["Blocks"]})
        token = page.get("NextToken")
        if not token:
            break
    expected = {block.index: block.data for block in nonzero_blocks(str(disk))}
    assert sorted(listed) == sorted(expected)
    assert len(expected) * 512 * 1024 == result.uploaded_bytes
    for index, data in expected.items():
        got = ebs.get_snapshot_block(SnapshotId=result.snapshot_id, BlockIndex=index,
                                     BlockToken=listed[index])["BlockData"].read()
        assert got == data, f"block {index} differs"


def test_the_ami_is_found_by_name_and_tags(built, aws):
    result, _, _ = built
    _, ec2 = clients(aws)
    images = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "name", "Values": [result.name]}])["Images"]
    assert [image["ImageId"] for image in images] == [result.image_id]
    image = images[0]
    assert image["Name"] == f"{result.service}-1.0.0"
    assert image["BootMode"] == "uefi"
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["version"] == "1.0.0"
    assert tags["revision"] == REVISION
    assert tags["source"] == "https://github.com/acme/orders"
    by_tag = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:revision", "Values": [REVISION]}])["Images"]
    assert result.image_id in [image["ImageId"] for image in by_tag]


def test_a_second_build_of_the_same_revision_returns_the_same_ami(built, docker_client):
    """Nothing is built again: the existing AMI comes back, marked existing."""
    result, _, _ = built
    again = build_artifact(result.service, "1.0.0", "ami", context=str(MICROSERVICE),
                           registry="127.0.0.1:5000", revision=REVISION,
                           docker_client=docker_client)
    assert again.existing and again.image_id == result.image_id
    assert again.snapshot_id == result.snapshot_id and again.phases == {}


def test_another_revision_of_the_version_is_refused_naming_the_ami(built, docker_client):
    result, _, _ = built
    with pytest.raises(AmiVersionTaken) as caught:
        build_artifact(result.service, "1.0.0", "ami", context=str(MICROSERVICE),
                       registry="127.0.0.1:5000", revision="2e" * 20,
                       docker_client=docker_client)
    assert result.image_id in str(caught.value) and REVISION in str(caught.value)
    assert caught.value.blame == "repository"


@pytest.fixture
def alpine_like(docker_client, tmp_path):
    """A local image whose /etc/os-release says Alpine (no image can be pulled here)."""
    tag = f"ami-test-alpine-like:{uuid.uuid4().hex[:8]}"
    context = make_context(tmp_path / "base", "FROM scratch\nCOPY os-release /etc/os-release\n",
                           {"os-release": 'ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n'})
    docker_client.images.build(path=str(context), tag=tag, pull=False, network_mode="none")
    yield tag
    docker_client.images.remove(tag, force=True)


def test_an_image_not_based_on_debian_or_ubuntu_fails_before_any_build(
        aws, docker_client, tmp_path, alpine_like):
    """FROM an Alpine-like base: the error names it and the supported bases; nothing is
    built, no snapshot started."""
    context = make_context(tmp_path / "ctx", f"FROM {alpine_like} AS app\nFROM app\n"
                           "COPY app /app\nCMD [\"/app\"]\n", {"app": "#!/bin/sh\n"})
    _, ec2 = clients(aws)
    before = len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    service = f"ami-alpine-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnsupportedBaseImage) as caught:
        build_artifact(service, "1.0.0", "ami", context=str(context),
                       registry="127.0.0.1:5000", revision=REVISION,
                       docker_client=docker_client)
    message = str(caught.value)
    assert "Alpine Linux v3.20" in message and "Debian" in message and "Ubuntu" in message
    assert alpine_like in message
    assert not docker_client.images.list(name=f"127.0.0.1:5000/{service}")
    assert len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == before


def test_a_base_the_engine_does_not_hold_is_checked_after_the_image_is_built(
        aws, docker_client, tmp_path, alpine_like):
    """`FROM $BASE`: the image is built, then its /etc/os-release refuses it, before the
    bootable layer."""
    context = make_context(tmp_path / "ctx", "ARG BASE\nFROM $BASE\nCMD [\"/app\"]\n")
    service = f"ami-alpine-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(UnsupportedBaseImage, match="Alpine Linux v3.20"):
            build_artifact(service, "1.0.0", "ami", context=str(context),
                           registry="127.0.0.1:5000", revision=REVISION,
                           build_args={"BASE": alpine_like}, docker_client=docker_client)
        assert docker_client.images.list(name=f"127.0.0.1:5000/{service}")
        assert not docker_client.images.list(name=f"127.0.0.1:5000/{service}:1.0.0-bootable")
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"127.0.0.1:5000/{service}:1.0.0", force=True)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                    or not Path(qemu.OVMF_CODE).exists(),
                    reason="qemu-system-x86 and ovmf are not installed (scripts/test-env)")
def test_the_disk_boots_in_qemu_and_the_service_answers_its_health_check(built):
    """UEFI (OVMF) on an NVMe disk, user networking: GET /health from inside the machine
    answers 200, served by the image's CMD under systemd."""
    _, disk, _ = built
    with qemu.boot(str(disk), guest_port=8000) as machine:
        status, body, seconds = machine.wait_for_http("/health", timeout=BOOT_TIMEOUT)
        console = machine.console
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert "Listening at: http://0.0.0.0:8000" in console  # gunicorn, started by systemd
    print(f"boot-to-health {seconds:.1f} s")
