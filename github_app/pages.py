"""What people see in a browser: the build pages and the badges.

- `GET /`: redirects to `/builds` (to `/setup` until the App is set up);
- `GET /builds`: recent builds, filtered by `?repository=` and `?status=`;
- `GET /builds/<id>`: one build (the check run's `details_url`), its image,
  links to the pull request and commit, and its log, followed live while the
  build runs (a small script; without JavaScript the page refreshes itself);
- `GET /builds/<id>/log`: the log as plain text, from `?offset=` on;
- `GET /badges/<owner>/<repo>.svg` and `.json`: the badge, and its shields.io
  endpoint.

Pages are rendered on the server with autoescaping: log lines, PR titles and
repository names are user input and are never written as markup. A per-request
Content-Security-Policy nonce admits only our own inline style and script."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, g, redirect, render_template, request, url_for

from . import badges, reporting, signin
from .jobs import BuildState
from .runtime import current_runtime

bp = Blueprint("pages", __name__, template_folder="templates")

BADGE_LABEL = "build"
# The build page shows at most this much of the log; the rest is at /builds/<id>/log.
PAGE_LOG_BYTES = 1024 * 1024
# One poll of the live log returns at most this much; the script asks again at once.
LOG_CHUNK_BYTES = 256 * 1024
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
# A badge for "Owner/Repo" looks for the stored "owner/repo" among this many recent builds.
CASE_LOOKUP_WINDOW = 1000

STATUS_WORDS = {
    BuildState.QUEUED: "queued",
    BuildState.RUNNING: "running",
    BuildState.SUCCEEDED: "succeeded",
    BuildState.FAILED: "failed",
    BuildState.ERRORED: "error",
    BuildState.CANCELLED: "cancelled",
    BuildState.SKIPPED: "not built (fork)",
}


# -- pure helpers -------------------------------------------------------------


def github_web_url(api_url: str) -> str:
    """The web root matching a REST API root.

    https://api.github.com -> https://github.com; https://HOST/api/v3 (GitHub
    Enterprise Server) -> https://HOST; https://api.SUB.ghe.com -> https://SUB.ghe.com.
    """
    parts = urlsplit(api_url.rstrip("/"))
    host, path = parts.netloc, parts.path
    if path.endswith("/api/v3"):
        path = path[: -len("/api/v3")]
    elif host.startswith("api.") and not path:
        host = host[len("api.") :]
    return f"{parts.scheme}://{host}{path}"


def format_duration(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'; '' when unknown."""
    if seconds is None or seconds < 0:
        return ""
    return reporting.format_duration(timedelta(seconds=seconds))


def format_time(timestamp: float | None) -> str:
    """A unix time as '2024-05-01 12:03:04 UTC'."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_ago(timestamp: float | None, now: float) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago'."""
    if timestamp is None:
        return ""
    delta = max(0, now - timestamp)
    if delta < 45:
        return "just now"
    if delta < 3600:
        return f"{max(1, round(delta / 60))} min ago"
    if delta < 86400:
        return f"{round(delta / 3600)} h ago"
    days = round(delta / 86400)
    return f"{days} day{'s' if days != 1 else ''} ago"


def format_size(size: int | None) -> str:
    """Bytes as '48.2 MB'."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def pinned_reference(reference: str | None, digest: str | None) -> str | None:
    """REGISTRY/service:version@sha256:..., the reference that always pulls this image."""
    if not reference:
        return None
    if "@" in reference or not digest:
        return reference
    return f"{reference}@{digest}"


def build_duration(build: Any, now: float) -> float | None:
    """How long the build took, or has been running so far."""
    if build.duration is not None:
        return build.duration
    if build.started_at is not None:
        return (build.finished_at or now) - build.started_at
    return None


def badge_etag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


# -- request helpers ----------------------------------------------------------


def _canonical_repository(store: Any, name: str) -> str:
    """The repository's name as stored, matched case-insensitively like GitHub does."""
    if store.recent_builds(limit=1, repository=name):
        return name
    wanted = name.lower()
    for build in store.recent_builds(limit=CASE_LOOKUP_WINDOW):
        if build.repository.lower() == wanted:
            return build.repository
    return name


def _parse_state(value: str | None) -> BuildState | None:
    if not value:
        return None
    value = value.strip().lower()
    aliases = {"success": "succeeded", "failure": "failed", "error": "errored"}
    try:
        return BuildState(aliases.get(value, value))
    except ValueError:
        return abort(
            400, f"Unknown status {value!r}: use one of {', '.join(s.value for s in BuildState)}."
        )


def _build_or_404(build_id: int) -> Any:
    """The build, when the viewer may see it; 404 the same way when it is not there at all."""
    build = current_runtime().store.get_build(build_id)
    if build is None or not signin.visibility().shows(build):
        abort(404, f"There is no build {build_id}.")
    return build


def _pr_title(store: Any, job_id: int) -> str | None:
    """The pull request's title, when the job's request recorded it."""
    job = store.get_job(job_id)
    if job is None or not isinstance(job.request, dict):
        return None
    for key in ("pr_title", "title"):
        if isinstance(job.request.get(key), str):
            return job.request[key]
    pull_request = job.request.get("pull_request")
    if isinstance(pull_request, dict) and isinstance(pull_request.get("title"), str):
        return pull_request["title"]
    return None


@bp.before_request
def _set_nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)


@bp.after_request
def _security_headers(response: Response) -> Response:
    # Log text and titles come from repositories: no sniffing a log into HTML,
    # and only our own nonce'd style and script may run on a page.
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        nonce = g.get("csp_nonce", "")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'"
        )
        response.headers["Referrer-Policy"] = "same-origin"
        # What a page shows depends on who is signed in: no shared cache may keep it.
        response.headers.setdefault("Cache-Control", "private, no-cache")
        response.vary.add("Cookie")
    return response


@bp.errorhandler(400)
@bp.errorhandler(404)
def _error_page(error: Any) -> tuple[str, int]:
    return (
        render_template(
            "pages/error.html",
            code=error.code,
            title="Not found" if error.code == 404 else "Bad request",
            message=error.description,
        ),
        error.code,
    )


@bp.app_template_filter("duration")
def _duration_filter(seconds: float | None) -> str:
    return format_duration(seconds)


@bp.app_template_filter("utc")
def _utc_filter(timestamp: float | None) -> str:
    return format_time(timestamp)


@bp.app_template_filter("iso")
def _iso_filter(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


# -- build pages --------------------------------------------------------------


@bp.get("/")
def home():
    """The builds, or the App's setup while Slipway has no App credentials."""
    from .setup import pick_up_stored_credentials

    runtime = current_runtime()
    pick_up_stored_credentials(runtime)
    return redirect("/builds" if runtime.config.has_app_credentials else "/setup")


@bp.get("/builds")
def list_builds():
    runtime = current_runtime()
    repository = (request.args.get("repository") or "").strip() or None
    state = _parse_state(request.args.get("status"))
    limit = min(max(request.args.get("limit", DEFAULT_LIST_LIMIT, type=int), 1), MAX_LIST_LIMIT)
    if repository:
        repository = _canonical_repository(runtime.store, repository)
    seen = signin.visibility()
    readable = seen.readable(runtime.store.private_repositories()) if seen.viewer else set()
    builds = runtime.store.recent_builds(limit=limit, repository=repository, state=state,
                                         readable=readable)
    now = time.time()
    rows = [
        {
            "build": build,
            "status": STATUS_WORDS[build.state],
            "duration": format_duration(build_duration(build, now)),
            "when": build.started_at or build.created_at,
            "ago": format_ago(build.started_at or build.created_at, now),
        }
        for build in builds
    ]
    return render_template(
        "pages/builds.html",
        rows=rows,
        repository=repository or "",
        state=state.value if state else "",
        states=[(s.value, STATUS_WORDS[s]) for s in BuildState],
        github=github_web_url(runtime.config.api_url),
        following=any(b.state in (BuildState.QUEUED, BuildState.RUNNING) for b in builds),
    )


@bp.app_context_processor
def _viewer_context() -> dict:
    """Who is signed in, for the top bar of every page."""
    runtime = current_runtime()
    return {"viewer": signin.current_viewer(),
            "signin_enabled": runtime.config.has_oauth_client,
            "here": request.full_path.rstrip("?") if request else "/builds"}


@bp.get("/builds/<int:build_id>")
def show_build(build_id: int):
    runtime = current_runtime()
    build = _build_or_404(build_id)
    log = runtime.store.build_log(build.id)
    start = max(0, log.size() - PAGE_LOG_BYTES)
    text, offset = log.read(start)
    if start > 0:  # begin at a whole line
        text = text.split("\n", 1)[1] if "\n" in text else text
    now = time.time()
    github = github_web_url(runtime.config.api_url)
    repo_url = f"{github}/{build.repository}"
    return render_template(
        "pages/build.html",
        build=build,
        status=STATUS_WORDS[build.state],
        finished=build.finished,
        pr_title=_pr_title(runtime.store, build.job_id),
        repo_url=repo_url,
        pr_url=f"{repo_url}/pull/{build.pr_number}" if build.pr_number else None,
        merge_url=f"{repo_url}/commit/{build.merge_sha}",
        head_url=f"{repo_url}/commit/{build.head_sha}",
        image=None if build.machine_image else pinned_reference(build.reference, build.digest),
        ami=build.machine_image,
        phase_time=reporting.phase_time,
        size=format_size(build.size),
        duration=format_duration(build_duration(build, now)),
        log_text=text,
        log_offset=offset,
        log_clipped=start > 0,
        log_url=url_for("pages.build_log", build_id=build.id),
    )


@bp.get("/builds/<int:build_id>/log")
def build_log(build_id: int):
    """The log as text/plain from `?offset=` (bytes) on; `X-Log-Offset` says where to go on."""
    runtime = current_runtime()
    build = runtime.store.get_build(build_id)
    if build is None or not signin.visibility().shows(build):
        return Response(f"There is no build {build_id}.\n", status=404, mimetype="text/plain")
    offset = request.args.get("offset", 0, type=int)
    if offset < 0:
        return Response("offset must be 0 or more.\n", status=400, mimetype="text/plain")
    # A follower reads a chunk at a time; a plain GET gets the whole log.
    limit = LOG_CHUNK_BYTES if "offset" in request.args else None
    text, next_offset = runtime.store.build_log(build.id).read(offset, limit)
    response = Response(text, mimetype="text/plain")
    response.headers["X-Log-Offset"] = str(next_offset)
    response.headers["X-Build-State"] = build.state.value
    response.headers["Cache-Control"] = "no-store"
    return response


# -- badges -------------------------------------------------------------------


def _latest_badge(owner: str, repo: str) -> tuple[str, str, Any]:
    """The badge's message and colour, and the build it shows (None: nothing to show)."""
    runtime = current_runtime()
    repository = _canonical_repository(runtime.store, f"{owner}/{repo}")
    service = (request.args.get("service") or "").strip() or None
    latest = runtime.store.latest_finished_build(repository, service=service)
    if latest is None or not signin.visibility().shows(latest):
        return (*badges.badge_for(None, None), None)
    return (*badges.badge_for(latest.state, latest.version), latest)


def _badge_response(body: bytes, mimetype: str, build: Any) -> Response:
    # No build to show and a private one the viewer may not read answer alike: 404 with
    # the grey "unknown" badge, so the answer never tells that a private repository exists.
    response = Response(body, mimetype=mimetype, status=200 if build is not None else 404)
    # GitHub's image proxy (camo) caches unless told to revalidate every time;
    # the ETag makes that revalidation a cheap 304.
    response.headers["Cache-Control"] = "no-cache, max-age=0, must-revalidate"
    if build is not None and not build.public:
        response.headers["Cache-Control"] = "private, no-cache, max-age=0, must-revalidate"
        response.vary.add("Cookie")
    if build is None:
        return response
    response.set_etag(badge_etag(body))
    return response.make_conditional(request)


@bp.get("/badges/<owner>/<repo>.svg")
def badge_svg(owner: str, repo: str) -> Response:
    message, color, build = _latest_badge(owner, repo)
    svg = badges.render_badge_svg(BADGE_LABEL, message, color)
    return _badge_response(svg.encode("utf-8"), "image/svg+xml", build)


@bp.get("/badges/<owner>/<repo>.json")
def badge_json(owner: str, repo: str) -> Response:
    message, color, build = _latest_badge(owner, repo)
    body = json.dumps(badges.shields_endpoint_json(BADGE_LABEL, message, color))
    return _badge_response(body.encode("utf-8"), "application/json", build)
