"""Errors of the GitHub App. Each one's `str()` is a sentence the reader can act on.

    SlipwayError
     ├── ConfigError          a missing or malformed environment variable (`.variable`)
     ├── WebhookRejected      a delivery that is not answered 2xx (`.status`: 400, 401...)
     ├── VersionNotFound      the pull request gives no version
     ├── InvalidVersion       a version label or title holds no valid version (`.value`)
     ├── VersionTaken         the registry holds this version, built from another commit
     ├── ServiceConfigError   a bad `.github/slipway.yml` (`.entry`, `.field`)
     ├── GitHubError          GitHub answered an error or could not be reached (`.status`)
     ├── SourceError          the repository's source archive could not be read or unpacked
     │    └── SourceRefused   the source holds what Slipway refuses to unpack (`.path`)
     ├── ImageNameTaken       the image name belongs to another repository (`.owner`)
     └── LowDiskSpace         a build does not start: less than MIN_FREE_DISK free (`.free`)

`blame` says whose move it is, as in builder.errors: `"repository"` (the user's
repository must change: commit status `failure`) or `"infrastructure"` (the
engine, registry, GitHub or Slipway itself: commit status `error`).
"""

from __future__ import annotations

REPOSITORY = "repository"
INFRASTRUCTURE = "infrastructure"


class SlipwayError(Exception):
    """Base class of every error the GitHub App raises on purpose."""

    blame: str = INFRASTRUCTURE


class ConfigError(SlipwayError):
    """A configuration variable is missing or malformed; the message names it."""

    def __init__(self, message: str, *, variable: str | None = None):
        super().__init__(message)
        self.variable = variable


class WebhookRejected(SlipwayError):
    """A webhook delivery is refused with an HTTP status (401 signature, 400 malformed)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


VERSION_HELP = (
    "No version found. Add a label like `version:1.4.0`, put `1.4.0` in the title, "
    "or add `semver:patch`."
)


class VersionNotFound(SlipwayError):
    """The pull request has no version label, no version in its title and no bump label."""

    blame = REPOSITORY

    def __init__(self, message: str = VERSION_HELP):
        super().__init__(message)


class InvalidVersion(SlipwayError):
    """An explicit version (label or bump) is not usable; `.value` is what was given."""

    blame = REPOSITORY

    def __init__(self, message: str, *, value: str | None = None):
        super().__init__(message)
        self.value = value


class VersionTaken(SlipwayError):
    """The registry already holds `service:tag`, built from another commit (immutable)."""

    blame = REPOSITORY

    def __init__(self, *, service: str, tag: str, commit: str | None):
        owner = f"commit {commit[:12]}" if commit else "another commit"
        super().__init__(
            f"Version {tag} of {service} is already published, built from {owner}; a published "
            "version never changes. Give this pull request a new version (a `version:` label, "
            "a version in the title, or `semver:patch`) and re-run."
        )
        self.service = service
        self.tag = tag
        self.commit = commit


class ServiceConfigError(SlipwayError):
    """`.github/slipway.yml` is invalid; `.entry` (1-based) and `.field` locate the problem."""

    blame = REPOSITORY

    def __init__(self, message: str, *, entry: int | None = None, field: str | None = None):
        super().__init__(message)
        self.entry = entry
        self.field = field


class GitHubError(SlipwayError):
    """GitHub answered with an error status, or could not be reached (`status` None)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class SourceError(SlipwayError):
    """The repository's source archive could not be read or was refused while unpacking."""


class SourceRefused(SourceError):
    """The repository's source holds something Slipway refuses to unpack: a link out of the
    tree, a device, an absolute or `..` path, too many entries or bytes. `.path` names it."""

    blame = REPOSITORY

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ImageNameTaken(SlipwayError):
    """The image name resolves to one another repository published first (`.owner`)."""

    blame = REPOSITORY

    def __init__(self, *, image: str, owner: str, repository: str):
        super().__init__(
            f"The image name {image} belongs to {owner}, which published it first (the "
            f"org.opencontainers.image.source label of its tags), so {repository} cannot "
            "publish under it; nothing was pushed. Either give this service another name "
            "with `name:` in .github/slipway.yml, or ask Slipway's operator to set "
            "IMAGE_NAME={owner}/{service} so that each account's images have names of "
            "their own."
        )
        self.image = image
        self.owner = owner
        self.repository = repository


class LowDiskSpace(SlipwayError):
    """Where a build writes has less than MIN_FREE_DISK free; the build does not start."""

    def __init__(self, message: str, *, free: dict[str, int], needed: int):
        super().__init__(message)
        self.free = free  # bytes free, by path
        self.needed = needed
