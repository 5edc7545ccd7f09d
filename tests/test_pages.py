"""Build pages, the plain log and the badges, as a browser or GitHub's image proxy sees them."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
from flask import Flask

from github_app import pages
from github_app.config import Config
from github_app.jobs import BuildState, JobStore
from github_app.runtime import Runtime

DIGEST = "sha256:" + "ab12" * 16
MERGE_SHA = "9f2c1e7d4b3a29f2c1e7d4b3a29f2c1e7d4b3a20"
HEAD_SHA = "1111111111111111111111111111111111111111"


def make_app(config: Config, store: JobStore) -> Flask:
    """A Flask app serving the pages blueprint over a real store."""
    app = Flask(__name__)
    app.extensions["slipway"] = Runtime(config=config, store=store)
    app.register_blueprint(pages.bp)
    return app


@dataclass
class Site:
    """The app, its store and a way to record builds like the worker does."""

    app: Flask
    store: JobStore
    config: Config
    deliveries: int = 0

    @property
    def client(self):
        return self.app.test_client()

    def build(
        self,
        repository: str = "octo-org/orders",
        *,
        service: str = "orders",
        state: BuildState = BuildState.SUCCEEDED,
        pr_number: int = 7,
        pr_title: str = "Release 1.4.0",
        log: str = "",
        private: bool | None = False,
        **fields,
    ) -> int:
        self.deliveries += 1
        job = self.store.enqueue(
            f"delivery-{self.deliveries}",
            repository=repository,
            kind="merge",
            request={"pr_number": pr_number, "pr_title": pr_title},
        )
        build_id = self.store.create_build(
            job.job_id,
            repository=repository,
            service=service,
            pr_number=pr_number,
            head_sha=HEAD_SHA,
            merge_sha=MERGE_SHA,
            check_run_name="docker build",
            private=private,
        )
        now = self.store.clock()
        if state is BuildState.SUCCEEDED:
            fields = {
                "version": "1.4.0",
                "version_source": "the PR title",
                "reference": f"127.0.0.1:5000/{service}:1.4.0",
                "digest": DIGEST,
                "size": 48_200_000,
                **fields,
            }
        if state is not BuildState.QUEUED:
            fields.setdefault("started_at", now - 83)
        if state in (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.ERRORED):
            fields.setdefault("finished_at", now)
            fields.setdefault("duration", 83.0)
        self.store.update_build(build_id, state=state, **fields)
        if log:
            with self.store.build_log(build_id) as build_log:
                build_log.append(log)
        return build_id


@pytest.fixture
def site(data_dir):
    config = Config(data_dir=data_dir)
    with JobStore.from_data_dir(data_dir) as store:
        yield Site(make_app(config, store), store, config)


def text_of(response) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, spaces squeezed."""
    body = response.get_data(as_text=True)
    body = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", body)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


# -- /builds ------------------------------------------------------------------


def test_builds_lists_recent_builds_newest_first(site):
    """The list shows repository, PR, service, version, status and duration of each build."""
    first = site.build(pr_number=7)
    second = site.build(
        "octo-org/web",
        service="web",
        state=BuildState.FAILED,
        pr_number=12,
        error="No version found.",
    )
    response = site.client.get("/builds")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    assert body.index(f'id="build-{second}"') < body.index(f'id="build-{first}"')
    text = text_of(response)
    assert "octo-org/orders #7 orders 1.4.0 succeeded 1 min 23 s" in text
    assert "octo-org/web #12 web failed 1 min 23 s" in text
    assert 'href="https://github.com/octo-org/orders/pull/7"' in body
    assert f'href="/builds/{first}"' in body


def test_builds_filter_by_repository_ignores_case_and_by_status(site):
    """?repository= (any letter case, like GitHub) and ?status= narrow the list."""
    orders_ok = site.build("Octo-Org/Orders", pr_number=1)
    orders_bad = site.build("Octo-Org/Orders", state=BuildState.FAILED, pr_number=2)
    web = site.build("octo-org/web", service="web", pr_number=3)

    body = site.client.get("/builds?repository=octo-org/orders").get_data(as_text=True)
    assert f'id="build-{orders_ok}"' in body and f'id="build-{orders_bad}"' in body
    assert f'id="build-{web}"' not in body

    body = site.client.get("/builds?repository=Octo-Org/Orders&status=failed").get_data(
        as_text=True
    )
    assert f'id="build-{orders_bad}"' in body
    assert f'id="build-{orders_ok}"' not in body and f'id="build-{web}"' not in body

    assert "No builds match these filters" in text_of(site.client.get("/builds?status=running"))


def test_builds_rejects_an_unknown_status_with_a_readable_page(site):
    """A status that does not exist is a 400 page naming the valid ones."""
    response = site.client.get("/builds?status=<b>green</b>")
    assert response.status_code == 400
    assert "queued, running, succeeded, failed, errored" in text_of(response)
    assert "<b>green</b>" not in response.get_data(as_text=True)


def test_empty_list_says_how_builds_start(site):
    """Before the first build the list explains what starts one."""
    assert "No builds yet: merge a pull request" in text_of(site.client.get("/builds"))


# -- /builds/<id> -------------------------------------------------------------


def test_build_page_shows_the_image_with_digest_and_how_to_pull_it(site):
    """A succeeded build shows its pinned reference, the docker pull command and its links."""
    build_id = site.build(log="Step 1/3 : FROM python:3.11-slim\nSuccessfully built 0abc\n")
    response = site.client.get(f"/builds/{build_id}")

    assert response.status_code == 200
    text = text_of(response)
    reference = f"127.0.0.1:5000/orders:1.4.0@{DIGEST}"
    assert f"docker pull {reference}" in text
    assert "SUCCEEDED" in text.upper()
    assert "1.4.0 from the PR title" in text
    assert "Release 1.4.0" in text
    assert "Step 1/3 : FROM python:3.11-slim Successfully built 0abc" in text
    assert "48.2 MB" in text and "1 min 23 s" in text
    body = response.get_data(as_text=True)
    assert 'href="https://github.com/octo-org/orders/pull/7"' in body
    assert f'href="https://github.com/octo-org/orders/commit/{MERGE_SHA}"' in body
    assert 'http-equiv="refresh"' not in body  # finished: nothing to follow
    assert "<script" not in body


def test_a_build_before_the_merge_shows_its_head_and_staging_tag(site):
    """A pre-merge build names the head it built and where it is staged, not a merge commit;
    a merge published from it says so."""
    job = site.store.enqueue("delivery-pre", repository="octo-org/orders", kind="pre_merge",
                             request={"pr_number": 7, "pr_title": "Release 1.4.0"})
    pre = site.store.create_build(job.job_id, repository="octo-org/orders", service="orders",
                                  pr_number=7, head_sha=HEAD_SHA, merge_sha="",
                                  check_run_name="docker build", private=False)
    staged = f"127.0.0.1:5000/orders:pr-7@{DIGEST}"
    site.store.update_build(pre, state=BuildState.SUCCEEDED, staged_reference=staged,
                            reference=staged, version="1.4.0", finished_at=site.store.clock())
    text = text_of(site.client.get(f"/builds/{pre}"))
    assert f"Built from {HEAD_SHA[:12]} pull request head, before the merge: staged as " \
           "127.0.0.1:5000/orders:pr-7" in text
    assert "merge commit" not in text

    merged = site.build(published_from=staged)
    text = text_of(site.client.get(f"/builds/{merged}"))
    assert "published from the pre-merge build 127.0.0.1:5000/orders:pr-7 without building" \
        in text


def test_links_point_at_github_enterprise_when_the_api_is_there(data_dir):
    """With GITHUB_API_URL=https://HOST/api/v3, PR and commit links go to https://HOST."""
    config = Config(data_dir=data_dir, api_url="https://ghe.example.com/api/v3")
    with JobStore.from_data_dir(data_dir) as store:
        site = Site(make_app(config, store), store, config)
        body = site.client.get(f"/builds/{site.build()}").get_data(as_text=True)
    assert 'href="https://ghe.example.com/octo-org/orders/pull/7"' in body
    assert f'href="https://ghe.example.com/octo-org/orders/commit/{MERGE_SHA}"' in body


@pytest.mark.parametrize(
    ("api_url", "web_url"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://api.github.com/", "https://github.com"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
        ("https://ghe.example.com/api/v3/", "https://ghe.example.com"),
        ("https://api.octocorp.ghe.com", "https://octocorp.ghe.com"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
    ],
)
def test_github_web_url_follows_the_api_url(api_url, web_url):
    """The web host is derived from the REST API root."""
    assert pages.github_web_url(api_url) == web_url


def test_failed_build_says_what_failed_and_whose_fault(site):
    """A failed build shows its error and whether the repository or infrastructure failed."""
    build_id = site.build(
        state=BuildState.FAILED,
        error="No version found. Add a label like `version:1.4.0`.",
        failure_cause="repository",
        log="resolving version\n",
    )
    text = text_of(site.client.get(f"/builds/{build_id}"))
    assert "What failed" in text
    assert "The repository needs a change" in text
    assert "No version found. Add a label like `version:1.4.0`." in text
    assert "docker pull" not in text


def test_user_input_is_escaped_everywhere(site):
    """Log lines, PR titles and versions with markup are shown as text, never run."""
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    build_id = site.build(
        state=BuildState.RUNNING, pr_title=f"Release 1.4.0 {attack}", log=f"step {attack}\n"
    )
    for path in (f"/builds/{build_id}", "/builds"):
        body = site.client.get(path).get_data(as_text=True)
        assert "<img src=x" not in body
        assert '<script>alert("x")' not in body
    page = site.client.get(f"/builds/{build_id}")
    assert f"Release 1.4.0 {attack}" in text_of(page)
    assert f"step {attack}" in text_of(page)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert page.get_data(as_text=True).count(f'nonce="{nonce}"') == 2  # our style and script


def test_running_build_page_follows_the_log(site):
    """A running build's page carries the live-follow script and a no-JS refresh."""
    build_id = site.build(state=BuildState.RUNNING, log="Step 1/3\n")
    body = site.client.get(f"/builds/{build_id}").get_data(as_text=True)
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in body
    assert f'data-log-url="/builds/{build_id}/log"' in body
    assert 'data-offset="9"' in body  # where the script goes on from
    assert "following live" in body


def test_unknown_build_is_a_404_page(site):
    """A build id that does not exist answers a 404 HTML page."""
    response = site.client.get("/builds/999")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "There is no build 999." in text_of(response)
    assert site.client.get("/builds/999/log").status_code == 404


# -- /builds/<id>/log -----------------------------------------------------------


def test_log_is_plain_text_and_reads_on_from_an_offset(site):
    """/log is text/plain; ?offset= returns the rest and X-Log-Offset where to go on."""
    build_id = site.build(state=BuildState.RUNNING, log="line one\n")
    log_url = f"/builds/{build_id}/log"

    whole = site.client.get(log_url)
    assert whole.status_code == 200
    assert whole.mimetype == "text/plain"
    assert whole.get_data(as_text=True) == "line one\n"
    assert whole.headers["X-Log-Offset"] == "9"
    assert whole.headers["X-Build-State"] == "running"
    assert whole.headers["X-Content-Type-Options"] == "nosniff"

    with site.store.build_log(build_id) as log:
        log.append("line two <b>é</b>")
    rest = site.client.get(f"{log_url}?offset=9")
    assert rest.get_data(as_text=True) == "line two <b>é</b>\n"
    assert rest.headers["X-Log-Offset"] == str(9 + len("line two <b>é</b>\n".encode()))

    nothing_new = site.client.get(f"{log_url}?offset={rest.headers['X-Log-Offset']}")
    assert nothing_new.get_data(as_text=True) == ""
    assert nothing_new.headers["X-Log-Offset"] == rest.headers["X-Log-Offset"]
    assert site.client.get(f"{log_url}?offset=-1").status_code == 400


# -- badges -------------------------------------------------------------------

GREEN, RED, GREY = "#4c1", "#e05d44", "#9f9f9f"


def badge_texts(svg: str) -> list[str]:
    """The words the badge shows (its visible <text> elements, each once)."""
    root = ET.fromstring(svg)
    texts = []
    for element in root.iter("{http://www.w3.org/2000/svg}text"):
        if element.text and element.text not in texts:
            texts.append(element.text)
    return texts


def badge_fills(svg: str) -> set[str]:
    return set(re.findall(r'fill="(#[0-9a-fA-F]{3,6})"', svg))


def test_badge_is_unknown_and_grey_before_any_build(site):
    """Before any build the badge reads build | unknown in grey, with a 404: a private
    repository's badge answers the same way to those who may not read it."""
    response = site.client.get("/badges/octo-org/orders.svg")
    assert response.status_code == 404
    assert response.mimetype == "image/svg+xml"
    svg = response.get_data(as_text=True)
    assert badge_texts(svg) == ["build", "unknown"]
    assert GREY in badge_fills(svg)


def test_badge_shows_the_latest_version_in_green_after_a_success(site):
    """After a success the badge reads build | <version> in green."""
    site.build(state=BuildState.SUCCEEDED, version="1.4.0")
    svg = site.client.get("/badges/octo-org/orders.svg").get_data(as_text=True)
    assert badge_texts(svg) == ["build", "1.4.0"]
    assert GREEN in badge_fills(svg)


def test_badge_is_failing_in_red_after_a_failure(site):
    """A failure after a success turns the badge to build | failing in red."""
    site.build(state=BuildState.SUCCEEDED, version="1.4.0")
    site.build(state=BuildState.FAILED, error="Step 2/3 failed")
    svg = site.client.get("/badges/octo-org/orders.svg").get_data(as_text=True)
    assert badge_texts(svg) == ["build", "failing"]
    assert RED in badge_fills(svg)


def test_badge_ignores_builds_still_running_and_case_of_the_name(site):
    """A running build leaves the badge on the last result; Owner/Repo matches owner/repo."""
    site.build("Octo-Org/Orders", state=BuildState.SUCCEEDED, version="2.0.0")
    site.build("Octo-Org/Orders", state=BuildState.RUNNING)
    svg = site.client.get("/badges/octo-org/ORDERS.svg").get_data(as_text=True)
    assert badge_texts(svg) == ["build", "2.0.0"]


def test_badge_per_service(site):
    """?service= picks one service of a repository that builds several."""
    site.build("octo-org/shop", service="api", version="3.1.0")
    site.build("octo-org/shop", service="worker", state=BuildState.FAILED, error="boom")
    api = site.client.get("/badges/octo-org/shop.svg?service=api").get_data(as_text=True)
    worker = site.client.get("/badges/octo-org/shop.svg?service=worker").get_data(as_text=True)
    latest = site.client.get("/badges/octo-org/shop.svg").get_data(as_text=True)
    none = site.client.get("/badges/octo-org/shop.svg?service=nope").get_data(as_text=True)
    assert badge_texts(api) == ["build", "3.1.0"]
    assert badge_texts(worker) == ["build", "failing"]
    assert badge_texts(latest) == ["build", "failing"]
    assert badge_texts(none) == ["build", "unknown"]


def test_badge_lets_githubs_image_proxy_revalidate(site):
    """The badge is no-cache with an ETag; the same ETag answers 304, a new result a new ETag."""
    site.build(version="1.4.0")
    first = site.client.get("/badges/octo-org/orders.svg")
    assert "no-cache" in first.headers["Cache-Control"]
    etag = first.headers["ETag"]
    assert etag

    again = site.client.get("/badges/octo-org/orders.svg", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""

    site.build(version="1.5.0")
    changed = site.client.get("/badges/octo-org/orders.svg", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert badge_texts(changed.get_data(as_text=True)) == ["build", "1.5.0"]


def test_badge_json_is_a_shields_io_endpoint(site):
    """The .json badge answers the shields.io endpoint schema."""
    before = site.client.get("/badges/octo-org/orders.json")
    assert before.mimetype == "application/json"
    assert before.status_code == 404
    assert "no-cache" in before.headers["Cache-Control"]
    body = json.loads(before.get_data())
    assert body["schemaVersion"] == 1
    assert body["label"] == "build"
    assert body["message"] == "unknown"

    site.build(version="1.4.0")
    body = json.loads(site.client.get("/badges/octo-org/orders.json").get_data())
    assert body["message"] == "1.4.0"
    assert set(body) <= {
        "schemaVersion",
        "label",
        "message",
        "color",
        "labelColor",
        "isError",
        "namedLogo",
        "logoSvg",
        "logoColor",
        "logoWidth",
        "style",
        "cacheSeconds",
    }


def test_the_real_app_serves_the_pages_and_badges(data_dir):
    """create_app registers the build pages, the log and the badges."""
    from github_app import create_app

    app = create_app(Config(data_dir=data_dir))
    site = Site(app, app.extensions["slipway"].store, app.extensions["slipway"].config)
    build_id = site.build(log="hello\n")
    assert site.client.get("/builds").status_code == 200
    assert "docker pull" in text_of(site.client.get(f"/builds/{build_id}"))
    assert site.client.get(f"/builds/{build_id}/log").get_data(as_text=True) == "hello\n"
    svg = site.client.get("/badges/octo-org/orders.svg").get_data(as_text=True)
    assert badge_texts(svg) == ["build", "1.4.0"]
