"""Fixtures of the sample service's own tests.

The service is a plain module (`microservice/app.py`, what gunicorn loads as
`app:app` inside the image), so its directory goes on sys.path. No
`__init__.py` here: this folder must not become a second `tests` package
beside the top-level one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SERVICE_DIR = Path(__file__).resolve().parent.parent
if str(SERVICE_DIR) not in sys.path:
    sys.path.insert(0, str(SERVICE_DIR))

import app as service  # noqa: E402  (needs the path above)


@pytest.fixture
def make_client():
    """A Flask test client of the service made with a given environment."""

    def make(environ: dict[str, str] | None = None):
        return service.create_app(environ or {}).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()
