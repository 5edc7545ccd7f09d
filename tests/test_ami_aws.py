"""The AWS side of `type: ami` against moto's real server on loopback: the snapshot upload,
and what the build says when AWS refuses, throttles or is not configured.

No Docker here: the uploads send small sparse files made in the test, and the refusals
happen before any build starts. tests/test_ami_build.py builds the real disk.
"""

from __future__ import annotations

import os

import boto3
import pytest
from fake_aws import AwsProxy, Rule, aws_environment

from builder import (
    AwsAccessDenied,
    AwsCredentialsMissing,
    SnapshotUploadFailed,
    build_artifact,
)
from builder.ami import ebs
from builder.ami.blocks import EBS_BLOCK, nonzero_blocks


@pytest.fixture
def proxy(moto):
    proxy = AwsProxy(moto.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def aws_env(monkeypatch):
    def point_at(endpoint: str) -> None:
        for key, value in aws_environment(endpoint).items():
            monkeypatch.setenv(key, value)
    return point_at


def moto_ec2(moto):
    env = aws_environment(moto.url)
    return boto3.client("ec2", endpoint_url=moto.url, region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def sparse_disk(path, blocks: dict[int, bytes], size: int = 1 << 30) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        for index, data in blocks.items():
            f.seek(index * EBS_BLOCK)
            f.write(data)
    return str(path)


def snapshot_ids(moto) -> set[str]:
    return {s["SnapshotId"] for s in moto_ec2(moto).describe_snapshots(
        OwnerIds=["self"])["Snapshots"]}


@pytest.fixture
def context(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nCMD [\"true\"]\n")
    return str(tmp_path)


def test_only_nonzero_blocks_are_read_from_a_sparse_disk(tmp_path):
    """A 1 GiB sparse disk with three blocks of data yields those three, a zero-filled
    data block none."""
    data = {0: b"\x01" * EBS_BLOCK, 7: os.urandom(100), 2047: b"end"}
    path = sparse_disk(tmp_path / "d.raw", {**data, 9: bytes(EBS_BLOCK)})
    found = {block.index: block.data for block in nonzero_blocks(path)}
    assert sorted(found) == [0, 7, 2047]
    assert found[7][:100] == data[7] and found[7][100:] == bytes(EBS_BLOCK - 100)


def test_a_throttled_upload_is_retried_with_backoff_and_completes(tmp_path, moto, proxy,
                                                                  aws_env):
    """Two PutSnapshotBlock calls answered ThrottlingException: botocore retries them and
    every block arrives."""
    aws_env(proxy.url)
    proxy.rules.append(Rule("ebs:PutSnapshotBlock", "ThrottlingException", 429, times=2))
    path = sparse_disk(tmp_path / "d.raw", {1: os.urandom(EBS_BLOCK), 5: os.urandom(EBS_BLOCK)})
    upload = ebs.upload_snapshot(ebs.connect(), path, size_gib=1, description="t",
                                 tags={"version": "1"})
    assert proxy.rules[0].used == 2
    assert proxy.seen.count("ebs:PutSnapshotBlock") == 4  # 2 blocks, 2 retries
    assert upload.blocks == 2
    blocks = boto3.client("ebs", endpoint_url=moto.url).list_snapshot_blocks(
        SnapshotId=upload.snapshot_id)["Blocks"]
    assert sorted(b["BlockIndex"] for b in blocks) == [1, 5]


def test_a_failed_upload_deletes_the_unfinished_snapshot(tmp_path, moto, proxy, aws_env):
    """PutSnapshotBlock refused: the error names the action, and the snapshot is gone."""
    aws_env(proxy.url)
    proxy.rules.append(Rule("ebs:PutSnapshotBlock", "ValidationException", 400))
    before = snapshot_ids(moto)
    path = sparse_disk(tmp_path / "d.raw", {3: os.urandom(EBS_BLOCK)})
    with pytest.raises(SnapshotUploadFailed) as caught:
        ebs.upload_snapshot(ebs.connect(), path, size_gib=1, description="t", tags={})
    error = caught.value
    assert error.action == "ebs:PutSnapshotBlock" and error.deleted
    assert f"{error.snapshot_id} was deleted" in str(error)
    assert "ec2:DeleteSnapshot" in proxy.seen
    assert snapshot_ids(moto) == before


def test_access_denied_names_the_iam_action_to_allow(tmp_path, moto, proxy, aws_env):
    """CompleteSnapshot denied: the sentence says to allow ebs:CompleteSnapshot."""
    aws_env(proxy.url)
    proxy.rules.append(Rule("ebs:CompleteSnapshot", "AccessDeniedException", 403))
    path = sparse_disk(tmp_path / "d.raw", {0: b"x"})
    with pytest.raises(SnapshotUploadFailed) as caught:
        ebs.upload_snapshot(ebs.connect(), path, size_gib=1, description="t", tags={})
    assert caught.value.action == "ebs:CompleteSnapshot"
    assert "allow ebs:CompleteSnapshot in their IAM policy" in str(caught.value)


def test_a_denied_name_lookup_fails_the_build_before_any_docker_work(context, proxy, aws_env,
                                                                      monkeypatch):
    """DescribeImages denied: AwsAccessDenied naming ec2:DescribeImages, with no engine
    needed (DOCKER_HOST points nowhere)."""
    aws_env(proxy.url)
    proxy.rules.append(Rule("ec2:DescribeImages", "UnauthorizedOperation", 403))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    with pytest.raises(AwsAccessDenied) as caught:
        build_artifact("orders", "1.0.0", "ami", context=context, revision="a" * 40)
    assert caught.value.action == "ec2:DescribeImages"
    assert "allow ec2:DescribeImages" in str(caught.value)
    assert proxy.seen == ["ec2:DescribeImages"]


def test_no_credentials_fail_before_any_work_and_say_where_to_put_them(context, monkeypatch):
    """Without credentials: AwsCredentialsMissing naming AWS_ACCESS_KEY_ID, no call made."""
    for key, value in aws_environment("http://127.0.0.1:9").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AwsCredentialsMissing) as caught:
        build_artifact("orders", "1.0.0", "ami", context=context)
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)


def test_no_region_says_to_set_aws_default_region(context, monkeypatch):
    for key, value in aws_environment("http://127.0.0.1:9").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(AwsCredentialsMissing, match="AWS_DEFAULT_REGION"):
        build_artifact("orders", "1.0.0", "ami", context=context)
