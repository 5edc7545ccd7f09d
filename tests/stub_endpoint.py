"""A real HTTP endpoint on a loopback port that answers every request with one status.

It stands for what sits at the App's webhook URL when Slipway cannot answer: a load
balancer with no healthy backend (503), or, with `status=202`, a receiver that records
what GitHub sent.

    with StubEndpoint(status=503) as stub:
        fake_github.webhook_url = stub.url + "/webhook"
        stub.received            # [(headers, body bytes)] in order
"""

from __future__ import annotations

import threading

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class StubEndpoint:
    def __init__(self, status: int = 503):
        self.status = status
        self.received: list[tuple[dict, bytes]] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                   request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        self.received.append((dict(request.headers), request.get_data()))
        return Response(b'{"answer":"stub"}', status=self.status,
                        content_type="application/json")(environ, start_response)

    def __enter__(self) -> StubEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
