"""IMAGE_NAME and who owns an image name: pure parts (the registry parts are in test_e2e)."""

from __future__ import annotations

import pytest

from builder import InvalidReference
from github_app.errors import ImageNameTaken
from github_app.image_names import apply_template, same_source, source_owner, with_image_names
from github_app.services import Service


@pytest.mark.parametrize(("template", "expected"), [
    ("{service}", "orders"),
    ("{owner}/{service}", "octo-org/orders"),
    ("team/{repo}-{service}", "team/my_repo.web-orders"),
])
def test_image_name_templates_fill_in_lowercased_parts(template, expected):
    """{owner} and {repo} are made valid image-name parts before the name is validated."""
    assert apply_template(template, service="orders", owner="Octo-Org",
                          repo="My_Repo.Web") == expected


def test_a_template_that_makes_an_invalid_name_is_refused():
    """The filled-in name is validated like any image name."""
    with pytest.raises(InvalidReference):
        apply_template("{service}--{owner}/", service="orders", owner="octo", repo="r")


def test_the_service_keeps_its_name_and_gets_its_registry_name():
    """Check run names and badges keep `name`; the registry gets the template's name."""
    (service,) = with_image_names([Service(name="orders")], "{owner}/{service}",
                                  owner="Fork-Owner", repo="orders")
    assert service.name == "orders" and service.image_name == "fork-owner/orders"
    assert Service(name="orders").image_name == "orders"


@pytest.mark.parametrize(("label", "url", "same"), [
    ("https://github.com/octo-org/orders", "https://github.com/Octo-Org/Orders", True),
    ("https://github.com/octo-org/orders.git", "https://github.com/octo-org/orders/", True),
    ("https://github.com/octo-org/orders", "https://github.com/mallory/orders", False),
    ("", "https://github.com/octo-org/orders", False),
])
def test_a_source_label_names_a_repository_whatever_its_spelling(label, url, same):
    """Case, a trailing slash or .git do not make another repository."""
    assert same_source(label, url) is same


def test_the_refusal_names_the_owner_and_both_ways_out():
    """ImageNameTaken says who owns the name, and `name:` or IMAGE_NAME={owner}/{service}."""
    error = ImageNameTaken(image="orders", owner=source_owner("https://github.com/octo-org/orders"),
                           repository="mallory/orders")
    text = str(error)
    assert "octo-org/orders" in text and "mallory/orders" in text
    assert "`name:` in .github/slipway.yml" in text and "IMAGE_NAME={owner}/{service}" in text
    assert error.blame == "repository"
