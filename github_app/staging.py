"""Staged images of pull requests, and what the merge does with the registry.

A pre-merge build stages the head as `<image>:pr-<number>` and records it. At the
merge, `publish_staged` publishes that image under the version, without building,
when the merge commit's tree is the staged head's; `move_floating_tags` points
`X.Y`, `X` and `latest` at a release that leads its line; and when the pull request
closes, merged or not, `remove_stage` deletes its staging tags (and only them: see
`builder.registry.Registry.delete_tag`). Registry and GitHub calls only; the rules
are `floating_tags`'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import builder
from builder import BuilderError, BuildResult
from builder import registry as registry_api
from builder.registry import Registry
from github_app.errors import GitHubError
from github_app.floating_tags import staging_tag, tags_to_move
from github_app.records import Build
from github_app.versions import Version
from github_app.webhooks import REFRESH, BuildKind

log = logging.getLogger(__name__)


def staged_build(store, repository: str, pr_number: int | None, head_sha: str,
                 service: str) -> Build | None:
    """The latest pre-merge build that staged `head_sha` of this pull request's `service`."""
    if pr_number is None:
        return None
    for build in reversed(store.pre_merge_builds(repository, pr_number)):
        if build.head_sha == head_sha and build.service == service and build.staged_reference:
            return build
    return None


def remove_stage(worker, request) -> list[str]:
    """Delete the staging tags of a pull request's services; return what it removed.

    Best effort: a registry that cannot delete is logged, and never fails the job."""
    if request.pr_number is None:
        return []
    api = _registry(worker.config)
    tag = staging_tag(request.pr_number)
    # The staged reference names the image (IMAGE_NAME applied), not just the service.
    services = {_image_of(b.staged_reference, worker.config.registry)
                for b in worker.store.pre_merge_builds(request.repository, request.pr_number)
                if b.staged_reference}
    removed = []
    for service in sorted(services):
        try:
            if api.delete_tag(service, tag):
                removed.append(f"{service}:{tag}")
        except BuilderError as exc:
            log.warning("could not remove the staging tag %s:%s: %s", service, tag, exc)
    if removed:
        log.info("removed staging tags %s", ", ".join(removed))
    return removed


def _image_of(reference: str, registry: str) -> str:
    """The image name of `REGISTRY/IMAGE:TAG@sha256:...`."""
    name = reference.split("@", 1)[0].rsplit(":", 1)[0]
    return name.removeprefix(f"{registry}/")


def publish_staged(config, client, store, request, service: str, version: Version,
                   say: Callable[[str], None], *,
                   image: str | None = None) -> tuple[BuildResult, str] | None:
    """Publish the merged head's staged image as `service:version`, when the trees match.

    The same tree means the same files, so the same image: its layers are published
    with a new config carrying the merge commit's labels. Returns the result and the
    staged reference it came from; None when there is nothing to publish (then build)."""
    stage = staged_build(store, request.repository, request.pr_number, request.head_sha,
                         service)
    if stage is None:
        return None
    started = time.monotonic()
    try:
        head_tree = client.get_tree_sha(request.owner, request.repo, request.head_sha)
        merge_tree = client.get_tree_sha(request.owner, request.repo, request.merge_commit_sha)
    except GitHubError as exc:
        say(f"Slipway: could not compare the merge's tree with the staged head's ({exc}); "
            "building")
        return None
    if head_tree != merge_tree:
        say(f"Slipway: the merge commit's tree {merge_tree[:12]} is not the staged head's "
            f"{head_tree[:12]}; building")
        return None
    api = _registry(config)
    tag = staging_tag(request.pr_number)
    name = image or service  # its name in the registry (IMAGE_NAME applied)
    image = api.read_image(name, tag)
    if image is None or image.digest != stage.digest:
        say(f"Slipway: {name}:{tag} is no longer the image build {stage.id} staged; "
            "building")
        return None
    labels = builder.oci_labels(version.tag, datetime.now(UTC),
                                revision=request.merge_commit_sha,
                                source=request.html_url or stage_source(config, request))
    published = api.publish(image, version.tag, labels,
                            created=labels["org.opencontainers.image.created"])
    image_tag = f"{config.registry}/{name}:{version.tag}"
    result = BuildResult(
        service=name, version=version.tag, tag=image_tag,
        reference=f"{image_tag}@{published.digest}", digest=published.digest,
        image_id=stage.image_id or "", size=published.size,
        duration=time.monotonic() - started, log_tail="",
    )
    say(f"Slipway: the merge commit's tree is head {request.head_sha[:12]}'s: published "
        f"{stage.staged_reference} as {result.reference} in {result.duration:.2f} s, "
        "without building")
    return result, stage.staged_reference


def move_floating_tags(config, service: str, version: Version, digest: str,
                       say: Callable[[str], None]) -> tuple[str, ...]:
    """Point the floating tags a release leads (FLOATING_TAGS) at its manifest.

    Called from the repository's job, and jobs of one repository run one at a
    time, so two releases never race for `latest`. A failure is logged and the
    release stands."""
    if not config.floating_tags:
        return ()
    try:
        tags = registry_api.list_tags(config.registry, service,
                                      username=config.registry_username,
                                      password=config.registry_password)
        moving = tags_to_move(version.text, tags, config.floating_tags)
        if moving:
            _registry(config).put_tags(service, digest, moving)
            say(f"Slipway: moved {', '.join(moving)} to {version.tag}")
        return tuple(moving)
    except BuilderError as exc:
        say(f"Slipway: could not move the floating tags: {exc}")
        return ()


def _registry(config) -> Registry:
    return Registry(config.registry, username=config.registry_username,
                    password=config.registry_password)


def queue_refreshes(worker, request) -> list[int]:
    """After a release, queue a re-preview of the repository's other open pull requests.

    A `semver:*` bump over the highest release now lands elsewhere, and an explicit
    version may now be taken: their checks must say what merging publishes now. The
    re-preview builds nothing (see `premerge`); one per release and pull request."""
    queued = []
    for pending in worker.store.open_pull_requests(request.repository):
        if pending.get("pr_number") == request.pr_number:
            continue
        delivery = f"{request.delivery_id}:{REFRESH}:{pending['pr_number']}"
        result = worker.store.enqueue(
            delivery, repository=request.repository, kind=BuildKind.PRE_MERGE.value,
            request={**pending, "delivery_id": delivery, "action": REFRESH},
        )
        if result.created:
            queued.append(result.job_id)
    if queued:
        worker.wakeup.set()
    return queued


def stage_source(config, request) -> str:
    """The repository's web address when the delivery did not carry it."""
    from github_app.pages import github_web_url

    return f"{github_web_url(config.api_url)}/{request.repository}"
