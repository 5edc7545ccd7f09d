"""Everything that can go wrong while building and publishing an artifact.

::

    BuilderError                      blame
    ├── InvalidReference              repository   bad service name or version
    ├── UnsupportedArtifactType       repository   a type we do not know
    ├── ContextNotFound               repository   the build context directory is missing
    ├── DockerfileNotFound            repository   no Dockerfile where it was said to be
    ├── BuildFailed(step, log_tail)   repository   a Dockerfile instruction failed
    ├── PushFailed(reason, ...)       infrastructure   the registry did not take the image
    ├── EngineUnreachable             infrastructure   no Docker engine answers
    ├── RegistryUnreachable           infrastructure   the registry's HTTP API does not answer
    ├── UnsupportedBaseImage          repository   ami: the image is not Debian or Ubuntu based
    ├── AmiVersionTaken               repository   ami: the AMI name is another commit's
    ├── DiskAssemblyFailed(tool)      infrastructure   ami: a disk tool is missing or failed
    └── AwsError(action)              infrastructure   ami: an AWS call failed
        ├── AwsCredentialsMissing                  no credentials or no region
        ├── AwsAccessDenied                        the IAM policy lacks ``action``
        └── SnapshotUploadFailed(snapshot_id)      the upload stopped; the snapshot is deleted

``blame`` says whose move it is: ``"repository"`` means the user's repository or
input must change (commit status ``failure``); ``"infrastructure"`` means the
engine, the registry or the network must (commit status ``error``).

``str(error)`` is one sentence a user can act on; the evidence is on attributes.
"""

from __future__ import annotations

REPOSITORY = "repository"
INFRASTRUCTURE = "infrastructure"


class BuilderError(Exception):
    """Base class of every error that ``build_artifact`` and ``builder.registry`` raise."""

    blame: str = INFRASTRUCTURE


class InvalidReference(BuilderError):
    """The service name or the version cannot be part of a Docker image reference."""

    blame = REPOSITORY

    def __init__(self, message: str, *, value: str):
        super().__init__(message)
        self.value = value


class UnsupportedArtifactType(BuilderError):
    """An artifact type that this builder cannot make (yet)."""

    blame = REPOSITORY

    def __init__(self, message: str, *, artifact_type: str):
        super().__init__(message)
        self.artifact_type = artifact_type


class ContextNotFound(BuilderError):
    """The build context directory does not exist."""

    blame = REPOSITORY

    def __init__(self, message: str, *, context: str):
        super().__init__(message)
        self.context = context


class DockerfileNotFound(BuilderError):
    """The Dockerfile is not where the caller said it is."""

    blame = REPOSITORY

    def __init__(self, message: str, *, dockerfile: str):
        super().__init__(message)
        self.dockerfile = dockerfile


class BuildFailed(BuilderError):
    """A Dockerfile instruction failed; ``step`` names it, ``log_tail`` shows its output."""

    blame = REPOSITORY

    def __init__(self, message: str, *, step: str | None, log_tail: str, detail: str = ""):
        super().__init__(message)
        self.step = step
        self.log_tail = log_tail
        self.detail = detail


class PushFailed(BuilderError):
    """The registry did not accept the image.

    ``reason`` is ``"unreachable"`` (no connection), ``"auth"`` (credentials
    missing or refused) or ``"refused"`` (the registry answered and said no);
    ``detail`` is the engine's own message.
    """

    blame = INFRASTRUCTURE

    def __init__(self, message: str, *, reason: str, image: str, detail: str, log_tail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.image = image
        self.detail = detail
        self.log_tail = log_tail


class EngineUnreachable(BuilderError):
    """No Docker engine answers where the client looked for one."""

    blame = INFRASTRUCTURE

    def __init__(self, message: str, *, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class RegistryUnreachable(BuilderError):
    """The registry's HTTP API did not answer (or answered with a server error)."""

    blame = INFRASTRUCTURE

    def __init__(self, message: str, *, registry: str, detail: str = ""):
        super().__init__(message)
        self.registry = registry
        self.detail = detail


class BuildCancelled(BuilderError):
    """The caller stopped the build (its claim of the job lapsed); nothing was pushed after."""


class BuildTimedOut(BuilderError):
    """The build ran past its time limit and was stopped in the engine; nothing was pushed."""

    blame = REPOSITORY

    def __init__(self, message: str, *, seconds: float, step: str | None = None,
                 log_tail: str = ""):
        super().__init__(message)
        self.seconds = seconds
        self.step = step
        self.log_tail = log_tail


class BuildOutOfMemory(BuildFailed):
    """A build step was killed (exit code 137) under the build's memory limit."""

    def __init__(self, message: str, *, memory: int | None, step: str | None, log_tail: str,
                 detail: str = ""):
        super().__init__(message, step=step, log_tail=log_tail, detail=detail)
        self.memory = memory


class UnsupportedBaseImage(BuilderError):
    """A machine image needs a Debian or Ubuntu userland (apt, a kernel package)."""

    blame = REPOSITORY

    def __init__(self, message: str, *, image: str, found: str):
        super().__init__(message)
        self.image = image
        self.found = found


class AmiVersionTaken(BuilderError):
    """An AMI named ``<service>-<version>`` exists, registered from another revision."""

    blame = REPOSITORY

    def __init__(self, message: str, *, name: str, image_id: str, revision: str | None):
        super().__init__(message)
        self.name = name
        self.image_id = image_id
        self.revision = revision


class DiskAssemblyFailed(BuilderError):
    """A tool that assembles the disk (mke2fs, mkfs.vfat, mcopy, sfdisk) is missing or failed."""

    blame = INFRASTRUCTURE

    def __init__(self, message: str, *, tool: str, detail: str = ""):
        super().__init__(message)
        self.tool = tool
        self.detail = detail


class AwsError(BuilderError):
    """An AWS call failed; ``action`` is its IAM action (``ebs:PutSnapshotBlock``)."""

    blame = INFRASTRUCTURE

    def __init__(self, message: str, *, action: str, code: str = "", detail: str = ""):
        super().__init__(message)
        self.action = action
        self.code = code
        self.detail = detail


class AwsCredentialsMissing(AwsError):
    """boto3 found no credentials, or no region to work in."""


class AwsAccessDenied(AwsError):
    """The credentials are valid but their IAM policy does not allow ``action``."""


class SnapshotUploadFailed(AwsError):
    """The snapshot upload stopped; ``deleted`` says whether the unfinished snapshot is gone."""

    def __init__(self, message: str, *, action: str, snapshot_id: str, deleted: bool,
                 code: str = "", detail: str = ""):
        super().__init__(message, action=action, code=code, detail=detail)
        self.snapshot_id = snapshot_id
        self.deleted = deleted
