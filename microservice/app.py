"""The sample service Slipway builds in demos and end-to-end tests.

A small orders API: `GET /health`, `GET /version` and `GET /orders/<id>`.
Orders are a fixed in-memory table; the point is an image that starts,
answers and tells which version it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask, abort, jsonify

ORDERS = {
    1: {"id": 1, "item": "rope", "quantity": 2, "status": "shipped"},
    2: {"id": 2, "item": "anchor", "quantity": 1, "status": "pending"},
}


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Make the app; `environ` defaults to the process environment."""
    environ = os.environ if environ is None else environ
    app = Flask(__name__)
    # The Dockerfile turns its SERVICE_VERSION build argument (the version
    # Slipway builds) into this variable, so a running container reports it.
    version = environ.get("SERVICE_VERSION", "dev")
    revision = environ.get("SERVICE_REVISION", "unknown")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/version")
    def version_info():
        return {"service": "microservice", "version": version, "revision": revision}

    @app.get("/orders/<int:order_id>")
    def order(order_id: int):
        if order_id not in ORDERS:
            abort(404)
        return ORDERS[order_id]

    @app.errorhandler(404)
    def not_found(error):
        return jsonify(error="not found"), 404

    return app


app = create_app()

if __name__ == "__main__":  # local run without gunicorn: python app.py
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8000")))
