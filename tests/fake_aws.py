"""AWS for the AMI tests: moto's real server on loopback, and a proxy in front of it that
answers what moto never says (throttling, access denied, a failing call).

moto serves the EBS direct APIs and EC2's image calls over real HTTP; boto3
reaches it through ``AWS_ENDPOINT_URL``. The proxy forwards every request to
moto unchanged, except those its rules pick: it answers them itself with the
error AWS would send, in AWS's own wire format (EBS: REST-JSON with
``x-amzn-ErrorType``; EC2: the query API's XML).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from builder.ami.qemu import free_port


class MotoServer:
    """``python -m moto.server`` on a free loopback port, stopped with ``stop()``."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto's server did not start; pip install 'moto[server]'")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave it behind
            self.process.kill()
            self.process.wait()


def action_of(method: str, path: str, body: bytes) -> str:
    """The IAM action a request to EBS or EC2 stands for."""
    if method == "PUT" and re.fullmatch(r"/snapshots/[^/]+/blocks/\d+", path):
        return "ebs:PutSnapshotBlock"
    if method == "POST" and path == "/snapshots":
        return "ebs:StartSnapshot"
    if method == "POST" and path.startswith("/snapshots/completion/"):
        return "ebs:CompleteSnapshot"
    if method == "GET" and "/blocks" in path:
        return "ebs:GetSnapshotBlock" if re.search(r"/blocks/\d+", path) else \
            "ebs:ListSnapshotBlocks"
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    if "Action" in fields:
        return f"ec2:{fields['Action'][0]}"
    return f"?:{method} {path}"


@dataclass
class Rule:
    """Answer ``times`` requests for ``action`` (all of them when None) with ``code``."""

    action: str
    code: str
    status: int
    times: int | None = None
    used: int = 0


@dataclass
class AwsProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def start(self) -> AwsProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urllib.parse.urlsplit(self.path).path
                action = action_of(self.command, path, body)
                proxy.seen.append(action)
                rule = proxy._rule_for(action)
                if rule is not None:
                    return self._error(action, rule)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.upstream + self.path,
                                          data=body, headers=headers, timeout=60)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "content-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def _error(self, action: str, rule: Rule):
                message = f"{rule.code} for {action} (tests/fake_aws.py)"
                if action.startswith("ebs:"):
                    payload = json.dumps({"message": message}).encode()
                    self.send_response(rule.status)
                    self.send_header("x-amzn-ErrorType", rule.code)
                    self.send_header("Content-Type", "application/json")
                else:
                    payload = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors>"
                               f"<Error><Code>{rule.code}</Code><Message>{message}</Message>"
                               f"</Error></Errors><RequestID>fake</RequestID></Response>"
                               ).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    _lock = threading.Lock()

    def _rule_for(self, action: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.action == action and (rule.times is None or rule.used < rule.times):
                    rule.used += 1
                    return rule
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def aws_environment(endpoint: str, region: str = "eu-west-1") -> dict[str, str]:
    """The variables that point boto3 at ``endpoint`` with throwaway credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
