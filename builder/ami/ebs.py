"""AWS as the AMI build sees it: the EBS direct APIs and EC2's image calls.

The only module that imports boto3. Credentials, region and endpoint come from
the AWS SDK's usual places (``AWS_*`` variables, profiles, an instance role;
``AWS_ENDPOINT_URL`` points it at moto in the tests). Throttled and 5xx calls
are retried by botocore with exponential backoff and jitter ("standard" mode).
Every other failure becomes an ``AwsError`` that names the IAM action.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions

from builder.ami.blocks import EBS_BLOCK, linear_checksum, nonzero_blocks
from builder.errors import (
    AwsAccessDenied,
    AwsCredentialsMissing,
    AwsError,
    SnapshotUploadFailed,
)

MAX_ATTEMPTS = 10  # botocore's "standard" retries: up to 20 s apart, with jitter
UPLOAD_THREADS = 16  # PutSnapshotBlock calls in flight; EBS direct takes many in parallel
SNAPSHOT_TIMEOUT_MINUTES = 60  # EBS cancels a snapshot that sees no block for this long
ROOT_DEVICE = "/dev/xvda"

_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
           "UnauthorizedException"}
_BAD_CREDENTIALS = {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                    "InvalidAccessKeyId"}
_THROTTLED = {"ThrottlingException", "RequestThrottledException", "RequestLimitExceeded",
              "Throttling", "TooManyRequestsException"}


@dataclass(frozen=True)
class Aws:
    ebs: object
    ec2: object
    region: str


@dataclass(frozen=True)
class ExistingImage:
    image_id: str
    state: str
    revision: str | None
    tags: dict[str, str]


@dataclass(frozen=True)
class Upload:
    snapshot_id: str
    blocks: int
    bytes: int


def connect(session: boto3.Session | None = None) -> Aws:
    """Clients for EBS and EC2; raise AwsCredentialsMissing before any work when boto3 finds
    no credentials or no region."""
    session = session or boto3.Session()
    if session.get_credentials() is None:
        raise AwsCredentialsMissing(
            "No AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), or give the build host an instance role; docs/ami.md lists the "
            "IAM policy they need.",
            action="sts:GetCallerIdentity",
        )
    if not session.region_name:
        raise AwsCredentialsMissing(
            "No AWS region set: set AWS_DEFAULT_REGION to the region the AMI is for "
            "(boto3 reads AWS_DEFAULT_REGION, not AWS_REGION).",
            action="",
        )
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=UPLOAD_THREADS + 4,
    )
    return Aws(ebs=session.client("ebs", config=config),
               ec2=session.client("ec2", config=config),
               region=session.region_name)


@contextmanager
def aws_call(action: str) -> Iterator[None]:
    """Turn a failed call to ``action`` (``ec2:RegisterImage``) into an AwsError that says
    what to do."""
    try:
        yield
    except (botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError) as exc:
        raise AwsCredentialsMissing(
            "No usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), or give the build host an instance role.",
            action=action, detail=str(exc),
        ) from exc
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        if code in _DENIED:
            raise AwsAccessDenied(
                f"AWS denied {action} to these credentials: allow {action} in their IAM "
                f"policy (docs/ami.md has the whole policy). AWS said: {message}",
                action=action, code=code, detail=message,
            ) from exc
        if code in _BAD_CREDENTIALS:
            raise AwsCredentialsMissing(
                f"AWS refused the credentials ({code}) on {action}: check "
                f"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.",
                action=action, code=code, detail=message,
            ) from exc
        if code in _THROTTLED:
            raise AwsError(
                f"AWS kept throttling {action} after {MAX_ATTEMPTS} attempts with backoff: "
                f"try again later, or ask AWS for a higher EBS direct API quota.",
                action=action, code=code, detail=message,
            ) from exc
        raise AwsError(f"{action} failed: {code}: {message}", action=action, code=code,
                       detail=message) from exc
    except botocore.exceptions.BotoCoreError as exc:  # no connection, timeouts, ...
        raise AwsError(
            f"AWS did not answer {action}: {exc}. Check the build host's network and "
            f"AWS_ENDPOINT_URL if it is set.",
            action=action, detail=str(exc),
        ) from exc


def find_image(aws: Aws, name: str) -> ExistingImage | None:
    """This account's AMI called ``name``, if any (AMI names are unique per account and
    region)."""
    with aws_call("ec2:DescribeImages"):
        images = aws.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [name]}]
        )["Images"]
    images = [image for image in images if image.get("Name") == name]
    if not images:
        return None
    image = images[0]
    tags = {tag["Key"]: tag["Value"] for tag in image.get("Tags") or ()}
    return ExistingImage(image_id=image["ImageId"], state=image.get("State", ""),
                         revision=tags.get("revision"), tags=tags)


def upload_snapshot(
    aws: Aws,
    disk_path: str,
    *,
    size_gib: int,
    description: str,
    tags: dict[str, str],
    on_progress: Callable[[int, int], None] | None = None,
    before_block: Callable[[], None] | None = None,
) -> Upload:
    """Send the non-zero 512 KiB blocks of ``disk_path`` to a new EBS snapshot and complete it.

    If anything fails after StartSnapshot, the unfinished snapshot is deleted and
    SnapshotUploadFailed says whether that worked. ``before_block`` may raise to
    stop the upload (a timeout, a cancelled build): the snapshot is deleted too.
    """
    with aws_call("ebs:StartSnapshot"):
        started = aws.ebs.start_snapshot(
            VolumeSize=size_gib,
            Description=description,
            Tags=aws_tags(tags),
            Timeout=SNAPSHOT_TIMEOUT_MINUTES,
            ClientToken=str(uuid.uuid4()),
        )
    snapshot_id = started["SnapshotId"]
    try:
        digests, sent = _put_blocks(aws, snapshot_id, disk_path, on_progress, before_block)
        with aws_call("ebs:CompleteSnapshot"):
            aws.ebs.complete_snapshot(
                SnapshotId=snapshot_id,
                ChangedBlocksCount=len(digests),
                Checksum=linear_checksum([digests[index] for index in sorted(digests)]),
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        wait_for_snapshot(aws, snapshot_id)
    except AwsError as exc:
        raise _upload_failed(aws, snapshot_id, exc) from exc
    except BaseException:
        delete_snapshot(aws, snapshot_id)
        raise
    return Upload(snapshot_id=snapshot_id, blocks=len(digests), bytes=sent)


def _put_blocks(aws: Aws, snapshot_id: str, disk_path: str,
                on_progress: Callable[[int, int], None] | None,
                before_block: Callable[[], None] | None) -> tuple[dict[int, bytes], int]:
    digests: dict[int, bytes] = {}
    sent = 0

    def put(block) -> tuple[int, bytes]:
        with aws_call("ebs:PutSnapshotBlock"):
            aws.ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=block.index,
                BlockData=block.data,
                DataLength=len(block.data),
                Checksum=block.checksum,
                ChecksumAlgorithm="SHA256",
            )
        return block.index, block.digest

    with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        pending: set[concurrent.futures.Future] = set()

        def collect(until: int) -> None:
            nonlocal pending, sent
            while len(pending) > until:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    index, digest = future.result()  # the first failure stops the upload
                    digests[index] = digest
                    sent += EBS_BLOCK
                    if on_progress:
                        on_progress(len(digests), sent)

        try:
            for block in nonzero_blocks(disk_path):
                if before_block is not None:
                    before_block()
                pending.add(pool.submit(put, block))
                collect(until=UPLOAD_THREADS * 2)  # bounded: at most 32 blocks in memory
            collect(until=0)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return digests, sent


def wait_for_snapshot(aws: Aws, snapshot_id: str, *, timeout: float = 1800) -> None:
    """Wait until EBS has sealed the snapshot: RegisterImage refuses a pending one."""
    deadline = time.monotonic() + timeout
    delay = 1.0
    while True:
        with aws_call("ec2:DescribeSnapshots"):
            snapshots = aws.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        state = snapshots[0]["State"] if snapshots else "missing"
        if state == "completed":
            return
        if state in ("error", "missing") or time.monotonic() > deadline:
            message = snapshots[0].get("StateMessage", "") if snapshots else ""
            raise AwsError(
                f"EBS did not complete snapshot {snapshot_id} (state {state}"
                f"{': ' + message if message else ''}); run the build again.",
                action="ec2:DescribeSnapshots", code=state, detail=message,
            )
        time.sleep(delay)
        delay = min(delay * 2, 15)


def _upload_failed(aws: Aws, snapshot_id: str, cause: AwsError) -> SnapshotUploadFailed:
    deleted = delete_snapshot(aws, snapshot_id)
    after = (f"the unfinished snapshot {snapshot_id} was deleted" if deleted else
             f"the unfinished snapshot {snapshot_id} could not be deleted: delete it by hand "
             f"(aws ec2 delete-snapshot --snapshot-id {snapshot_id})")
    return SnapshotUploadFailed(
        f"The snapshot upload failed: {cause} ({after}).",
        action=cause.action, snapshot_id=snapshot_id, deleted=deleted, code=cause.code,
        detail=cause.detail,
    )


def delete_snapshot(aws: Aws, snapshot_id: str) -> bool:
    """Delete ``snapshot_id``; True when it is gone."""
    try:
        with aws_call("ec2:DeleteSnapshot"):
            aws.ec2.delete_snapshot(SnapshotId=snapshot_id)
        return True
    except AwsError:
        return False


def register_image(aws: Aws, *, name: str, snapshot_id: str, size_gib: int, description: str,
                   tags: dict[str, str]) -> str:
    """Register the snapshot as an x86_64 UEFI AMI with ENA; tag the AMI and its snapshot."""
    with aws_call("ec2:RegisterImage"):
        image_id = aws.ec2.register_image(
            Name=name,
            Description=description,
            Architecture="x86_64",
            VirtualizationType="hvm",
            BootMode="uefi",
            EnaSupport=True,
            RootDeviceName=ROOT_DEVICE,
            BlockDeviceMappings=[{
                "DeviceName": ROOT_DEVICE,
                "Ebs": {"SnapshotId": snapshot_id, "VolumeSize": size_gib,
                        "VolumeType": "gp3", "DeleteOnTermination": True},
            }],
            TagSpecifications=[{"ResourceType": "image", "Tags": aws_tags(tags)}],
        )["ImageId"]
    # Tagging on create is atomic on AWS; CreateTags again makes sure of it where the
    # endpoint ignores TagSpecifications (moto does), and tags the snapshot too.
    with aws_call("ec2:CreateTags"):
        aws.ec2.create_tags(Resources=[image_id, snapshot_id], Tags=aws_tags(tags))
    return image_id


def aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]
