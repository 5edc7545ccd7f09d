"""How long a registry that does not answer is waited for, and which requests are sent again."""

from __future__ import annotations

import time

import requests
import urllib3

from builder import patience
from builder.registry import _safe_to_retry


def test_no_patience_outside_a_block_and_doubling_waits_inside():
    assert list(patience.delays()) == []
    with patience.patience(3):
        waits = []
        for wait in patience.delays():
            waits.append(wait)
            time.sleep(wait)
    assert waits[:3] == [0.25, 0.5, 1.0]  # then what is left of the 3 s, not 2 s more
    assert waits[3] < 2.0
    assert 2.9 <= sum(waits) <= 3.2
    assert list(patience.delays()) == []  # the block ended


def refused() -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v2/", reason))


def test_only_what_cannot_happen_twice_is_sent_again():
    """A read is sent again; a write only when it never reached the registry."""
    cut = requests.ConnectionError("Connection aborted: RemoteDisconnected")
    assert _safe_to_retry("GET", cut) and _safe_to_retry("HEAD", cut)
    assert _safe_to_retry("PUT", refused()) and _safe_to_retry("POST", refused())
    assert not _safe_to_retry("PUT", cut)
    assert not _safe_to_retry("GET", requests.ReadTimeout("slow"))
