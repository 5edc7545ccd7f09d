"""ALLOWED_OWNERS: whose installations are built, and the App owner learnt once with GET /app."""

from __future__ import annotations

import pytest

from github_app.config import Config
from github_app.errors import ConfigError
from github_app.owners import AllowedOwners, OwnerRule


def test_the_rule_compares_logins_without_case():
    """GitHub logins are case-insensitive: Octo-Org is octo-org."""
    rule = OwnerRule.of(["octo-org", "Octocat"])
    assert rule.allows("Octo-Org") and rule.allows("octocat")
    assert not rule.allows("mallory") and not rule.allows(None) and not rule.allows("")


def test_a_star_allows_any_account():
    """ALLOWED_OWNERS=* builds every installation."""
    assert OwnerRule.of(["*"]).allows("anyone")


def test_the_refusal_says_what_to_change():
    """The reason names the account and the variable that would admit it."""
    assert "mallory is not in ALLOWED_OWNERS" in OwnerRule.of(["octo-org"]).refusal("mallory")
    owner_rule = OwnerRule.of(["octocat"], origin="the App's owner")
    assert "ALLOWED_OWNERS is not set" in owner_rule.refusal("mallory")


def test_without_allowed_owners_the_rule_waits_for_the_app_owner():
    """By default nothing is allowed until the App's owner is known; then only that account."""
    owners = AllowedOwners(None)
    assert owners.rule() is None
    owners.learn_app_owner("octocat")
    assert owners.rule().allows("OctoCat") and not owners.rule().allows("octo-org")


def test_allowed_owners_wins_over_the_app_owner():
    """A configured list is not replaced by what GET /app says."""
    owners = AllowedOwners(("octo-org",), app_owner="octocat")
    owners.learn_app_owner("octocat")
    assert owners.rule().allows("octo-org") and not owners.rule().allows("octocat")


def test_learning_in_the_background_retries_until_github_answers():
    """GET /app failing at start is retried; the rule is known once it answers."""
    answers = iter([RuntimeError("GitHub is down"), RuntimeError("still down"), "octocat"])
    pauses = []

    def fetch():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    owners = AllowedOwners(None)
    owners.learn_in_background(fetch, sleep=pauses.append).join(5)
    assert owners.rule().allows("octocat")
    assert pauses == [1.0, 2.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("octo-org", ("octo-org",)),
        (" octo-org , Octocat,octo-org ", ("octo-org", "Octocat")),
        ("*", ("*",)),
    ],
)
def test_allowed_owners_is_read_from_the_environment(value, expected):
    """ALLOWED_OWNERS is a comma-separated list of logins, or *."""
    environ = {} if value is None else {"ALLOWED_OWNERS": value}
    assert Config.from_env(environ, require_app=False).allowed_owners == expected


@pytest.mark.parametrize("value", ["octo org", "https://github.com/octo-org", ",", "a_b", "*,x"])
def test_a_malformed_allowed_owners_stops_start_up(value):
    """Anything but logins or * is refused with a line that names the variable."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"ALLOWED_OWNERS": value}, require_app=False)
    assert info.value.variable == "ALLOWED_OWNERS"


@pytest.mark.parametrize("value", ["{service}", "{owner}/{service}", "team/{repo}-{service}"])
def test_image_name_templates_are_read(value):
    """IMAGE_NAME holds {service} and may add {owner} and {repo}."""
    assert Config.from_env({"IMAGE_NAME": value}, require_app=False).image_name == value


@pytest.mark.parametrize("value", ["{owner}", "{service}/{branch}", "{service", "x}{service}"])
def test_a_malformed_image_name_stops_start_up(value):
    """A template without {service}, or with a field Slipway does not know, is refused."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"IMAGE_NAME": value}, require_app=False)
    assert info.value.variable == "IMAGE_NAME"


def test_the_oauth_client_needs_both_id_and_secret():
    """GITHUB_CLIENT_ID without GITHUB_CLIENT_SECRET is half a client: refused by name."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"GITHUB_CLIENT_ID": "Iv1.abc"}, require_app=False)
    assert info.value.variable == "GITHUB_CLIENT_SECRET"
    config = Config.from_env({"GITHUB_CLIENT_ID": "Iv1.abc", "GITHUB_CLIENT_SECRET": "s3"},
                             require_app=False)
    assert config.has_oauth_client and "s3" not in repr(config)
