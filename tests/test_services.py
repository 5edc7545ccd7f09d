"""parse_services: `.github/slipway.yml` text to services, with errors that say what to fix."""

from __future__ import annotations

import pytest

from github_app.errors import ServiceConfigError
from github_app.services import Service, ServiceType, image_name_for, parse_services


@pytest.mark.parametrize("text", [None, "", "  \n", "# nothing yet\n"])
def test_no_file_builds_the_repository_root(text):
    """Without a config file: one service named after the repository, root Dockerfile."""
    services = parse_services(text, repository_name="Hello-World")
    assert services == [Service(name="hello-world", context=".", dockerfile="Dockerfile",
                                type=ServiceType.DOCKER)]
    assert services[0].check_run_name(1) == "docker build"


@pytest.mark.parametrize(
    ("repository", "image"),
    [
        ("Hello-World", "hello-world"),
        ("orders", "orders"),
        ("My_Repo.Web", "my_repo.web"),
        ("-weird--name..", "weird--name"),
        ("a._b", "a-b"),
        ("café-api", "caf--api"),
    ],
)
def test_repository_names_become_valid_image_names(repository, image):
    """Lowercased, other characters as "-", separators Docker refuses collapsed."""
    assert image_name_for(repository) == image


def test_several_services():
    """Each entry becomes a service; check runs are named after them."""
    text = """
services:
  - name: orders
    context: services/orders/
    dockerfile: Dockerfile
    type: docker
  - name: billing
    context: ./services/billing
    dockerfile: docker/Dockerfile.prod
  - name: base-image
    type: ami
"""
    services = parse_services(text, repository_name="shop")
    assert services == [
        Service("orders", "services/orders", "Dockerfile", ServiceType.DOCKER),
        Service("billing", "services/billing", "docker/Dockerfile.prod", ServiceType.DOCKER),
        Service("base-image", ".", "Dockerfile", ServiceType.AMI),
    ]
    assert [s.check_run_name(len(services)) for s in services] == [
        "docker build: orders",
        "docker build: billing",
        "docker build: base-image",
    ]
    assert services[1].dockerfile_path == "services/billing/docker/Dockerfile.prod"


def test_a_single_service_may_omit_its_name():
    """One entry without a name is named after the repository."""
    services = parse_services("services:\n  - context: app\n", repository_name="Orders")
    assert services == [Service("orders", "app")]


def test_a_dockerfile_may_sit_elsewhere_in_the_repository():
    """A Dockerfile outside the context but inside the repository is allowed."""
    text = "services:\n  - name: api\n    context: api\n    dockerfile: ../docker/api.Dockerfile\n"
    assert parse_services(text, repository_name="r")[0].dockerfile_path == "docker/api.Dockerfile"


@pytest.mark.parametrize(
    ("text", "entry", "field", "words"),
    [
        ("services: [", None, None, "not valid YAML at line"),
        ("- name: orders\n", None, None, "must be a mapping with a `services:` list"),
        ("services: []\n", None, "services", "non-empty list"),
        ("services:\n  - name: a\nbuild: x\n", None, None, "unknown key(s) build"),
        ("services:\n  - orders\n", 1, None, "write it as a mapping"),
        ("services:\n  - name: Orders\n", 1, "name", "not a valid image name"),
        ("services:\n  - name: my orders\n", 1, "name", "not a valid image name"),
        ("services:\n  - name: a\n  - context: b\n", 2, "name", "has no `name`"),
        ("services:\n  - name: a\n  - name: a\n", 2, "name", "give each service its own"),
        ("services:\n  - name: a\n    image: x\n", 1, "image", "unknown field(s) image"),
        ("services:\n  - name: a\n    context: /srv/a\n", 1, "context", "relative path"),
        ("services:\n  - name: a\n    context: C:/a\n", 1, "context", "relative path"),
        ("services:\n  - name: a\n    context: a/../../b\n", 1, "context", "leaves the repository"),
        ("services:\n  - name: a\n    context: ..\n", 1, "context", "leaves the repository"),
        ("services:\n  - name: a\n    dockerfile: ../../D\n", 1, "dockerfile", "leaves"),
        ("services:\n  - name: a\n    type: rpm\n", 1, "type", "use `docker` or `ami`"),
        ("services:\n  - name: a\n    context: 3\n", 1, "context", "non-empty text"),
        ("services:\n  - name: a\n    context: ''\n", 1, "context", "non-empty text"),
    ],
)
def test_invalid_config_says_which_entry_and_field(text, entry, field, words):
    """Each mistake raises ServiceConfigError naming the file, entry and field, with the fix."""
    with pytest.raises(ServiceConfigError) as info:
        parse_services(text, repository_name="shop")
    error = info.value
    assert ".github/slipway.yml" in str(error)
    assert words in str(error)
    assert (error.entry, error.field) == (entry, field)
    if entry is not None:
        assert f"service #{entry}" in str(error)


def test_timeout_is_read_in_seconds():
    """`timeout: 900` gives the service a 900 s limit; without it, none of its own."""
    services = parse_services(
        "services:\n  - name: orders\n    timeout: 900\n  - name: web\n",
        repository_name="shop")
    assert [s.timeout for s in services] == [900, None]


@pytest.mark.parametrize("value", ["0", "-5", "'15m'", "1.5", "true", "[]"])
def test_a_timeout_that_is_not_whole_seconds_is_refused(value):
    with pytest.raises(ServiceConfigError, match="`timeout` must be a whole number") as caught:
        parse_services(f"services:\n  - name: orders\n    timeout: {value}\n",
                       repository_name="shop")
    assert caught.value.field == "timeout"


def test_the_time_limit_says_where_it_comes_from_and_is_capped():
    """BUILD_TIMEOUT when the service sets none; the service's own up to BUILD_TIMEOUT_MAX."""
    default = Service(name="orders").time_limit(1800, 7200)
    assert default.seconds == 1800 and "BUILD_TIMEOUT" in default.source
    own = Service(name="orders", timeout=900).time_limit(1800, 7200)
    assert own.seconds == 900 and "timeout: 900" in own.source
    assert ".github/slipway.yml" in own.source
    capped = Service(name="orders", timeout=9000).time_limit(1800, 7200)
    assert capped.seconds == 7200 and "BUILD_TIMEOUT_MAX" in capped.source
