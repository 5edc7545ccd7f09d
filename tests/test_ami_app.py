"""`type: ami` in the App: `.github/slipway.yml` asks for an AMI, the check run shows the
AMI id, its region, the snapshot and the time of each phase, the build page and the badge
work as for images.

The worker runs for real against the fake GitHub and moto's server. The AMI of the merge
commit is registered in moto first (through EC2's API), so the build finds it and returns
it without the minutes of a full build: tests/test_ami_build.py builds one for real.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from fake_aws import aws_environment
from slipway_harness import TINY_DOCKERFILE, Harness
from test_reporting import DETAILS, MERGE_SHA, UPDATE, assert_valid, version

from github_app.jobs import BuildState
from github_app.records import Build
from github_app.reporting import check_run_ami_registered, final_report

AMI = {"type": "ami", "image_id": "ami-0123456789abcdef0", "region": "eu-west-1",
       "name": "orders-1.4.0", "snapshot_id": "snap-0fedcba9876543210",
       "phases": {"docker build": 41.2, "bootable layer": 33.0, "disk": 9.8, "upload": 6.1,
                  "register": 0.4},
       "disk_bytes": 1 << 30, "uploaded_bytes": 440 << 20, "existing": False}


def ami_build(**fields) -> Build:
    values = dict(id=17, job_id=3, repository="Codertocat/Hello-World", service="orders",
                  pr_number=2, head_sha="ec26c3e5", merge_sha=MERGE_SHA,
                  check_run_name="docker build", state=BuildState.SUCCEEDED, created_at=1.0,
                  version="1.4.0", version_source="label version:1.4.0",
                  reference="ami-0123456789abcdef0 (eu-west-1)", digest=AMI["snapshot_id"],
                  image_id=AMI["image_id"], size=1 << 30, duration=91.0, finished_at=100.0,
                  artifact=json.dumps(AMI))
    values.update(fields)
    return Build(**values)


def test_the_check_run_shows_the_ami_region_snapshot_and_each_phase_time():
    check_run, status = final_report(ami_build(), details_url=DETAILS, log_tail="")
    summary = check_run["output"]["summary"]
    assert check_run["conclusion"] == "success"
    assert check_run["output"]["title"] == "Registered ami-0123456789abcdef0 (eu-west-1)"
    assert "`ami-0123456789abcdef0`** in **`eu-west-1`" in summary
    assert "`snap-0fedcba9876543210`" in summary and "`orders-1.4.0`" in summary
    for row in ("| docker build | 41.2 s |", "| bootable layer | 33.0 s |", "| disk | 9.8 s |",
                "| upload | 6.1 s |", "| register | 0.4 s |"):
        assert row in summary
    assert "1 GiB, 440 MiB uploaded" in summary
    assert "--image-id ami-0123456789abcdef0" in summary
    assert status["state"] == "success"
    assert status["description"] == "Registered ami-0123456789abcdef0 (eu-west-1)"
    assert_valid(*UPDATE, check_run)


def test_an_ami_found_from_the_same_commit_says_nothing_was_rebuilt():
    body = check_run_ami_registered(
        ami={**AMI, "existing": True, "phases": {}}, version=version(), commit_sha=MERGE_SHA,
        build_time=timedelta(seconds=2), completed_at=datetime(2024, 5, 4, tzinfo=UTC),
        details_url=DETAILS)
    assert "already registered from this commit" in body["output"]["summary"]
    assert "| phase |" not in body["output"]["summary"]
    assert_valid(*UPDATE, body)


@pytest.fixture
def harness(fake_github, registry, data_dir, moto, monkeypatch):
    for key, value in aws_environment(moto.url).items():
        monkeypatch.setenv(key, value)
    h = Harness(fake_github, registry.address, data_dir)
    yield h
    h.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def register_in_moto(moto, name: str, revision: str) -> tuple[str, str]:
    """An AMI called ``name`` from ``revision``, registered through EC2's API (moto)."""
    options = dict(endpoint_url=moto.url, region_name="eu-west-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
    ebs, ec2 = boto3.client("ebs", **options), boto3.client("ec2", **options)
    snapshot = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=0)
    image = ec2.register_image(
        Name=name, Architecture="x86_64", BootMode="uefi", EnaSupport=True,
        VirtualizationType="hvm", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    ec2.create_tags(Resources=[image], Tags=[
        {"Key": "version", "Value": "1.0.0"}, {"Key": "revision", "Value": revision},
        {"Key": "snapshot", "Value": snapshot}])
    return image, snapshot


def ami_repo(harness):
    service = f"ami-app-{uuid.uuid4().hex[:8]}"
    files = {".github/slipway.yml": f"services:\n  - name: {service}\n    type: ami\n",
             "Dockerfile": TINY_DOCKERFILE, "app.py": "print('hi')\n"}
    # Public: its build page and badge are shown without signing in.
    return service, harness.repository(files, private=False)


def test_a_merge_of_a_type_ami_service_reports_its_ami_on_the_check_run_page_and_badge(
        harness, moto):
    service, repo = ami_repo(harness)
    image, snapshot = register_in_moto(moto, f"{service}-1.0.0", repo.merge_sha)
    answer = harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    assert answer.status_code == 202, answer.text
    harness.run_worker()

    [run] = harness.final_check_runs(repo)
    assert run["conclusion"] == "success", run["output"]
    assert run["output"]["title"] == f"Registered {image} (eu-west-1)"
    assert f"`{snapshot}`" in run["output"]["summary"]
    assert [s["state"] for s in harness.statuses(repo)] == ["pending", "success"]
    [build] = harness.store.recent_builds(repository=repo.full_name)
    assert build.machine_image["image_id"] == image and build.machine_image["existing"]

    client = harness.app.test_client()
    page = client.get(f"/builds/{build.id}").get_data(as_text=True)
    assert f"{image} (eu-west-1)" in page and snapshot in page
    assert "docker pull" not in page
    badge = client.get(f"/badges/{repo.full_name}.json").get_json()
    assert badge["message"] == "1.0.0" and badge["color"] == "#4c1"  # green


def test_an_ami_name_taken_by_another_commit_fails_the_check_run_naming_it(harness, moto):
    service, repo = ami_repo(harness)
    image, _ = register_in_moto(moto, f"{service}-1.0.0", "0" * 40)
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    harness.run_worker()

    [run] = harness.final_check_runs(repo)
    assert run["conclusion"] == "failure"
    assert image in run["output"]["summary"] and "0" * 40 in run["output"]["summary"]
    # The repository must change (a new version), not the infrastructure.
    assert [s["state"] for s in harness.statuses(repo)] == ["pending", "failure"]
