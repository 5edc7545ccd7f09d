"""Request bodies checked against GitHub's official OpenAPI description.

The description is the npm package `@octokit/openapi` (tests/node_modules, `npm ci` in tests/).
It is 13 MB of JSON: it is read once per process, on first use, and one compiled validator is
kept per operation.

    errors = request_body_errors("POST", "/repos/o/r/check-runs", body)   # [] when valid
    errors = response_body_errors("GET", "/app/hook/deliveries", 200, answer)
    operation = find_operation("PATCH", "/repos/o/r/check-runs/7")        # Operation | None

The description is OpenAPI 3.0, whose schemas are draft-4 JSON Schema plus `nullable`; a schema
with `nullable: true` is rewritten to also accept `null` before it is compiled.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema

SPEC_PATH = (
    Path(__file__).parent / "node_modules/@octokit/openapi/generated/api.github.com.json"
)
_SPEC_URI = "urn:github:openapi"
_lock = threading.Lock()
_state: dict = {}


@dataclass(frozen=True)
class Operation:
    """One method on one path template of the description."""

    method: str
    template: str
    operation_id: str
    body_schema: dict | None  # None: the operation takes no JSON body
    body_required: bool
    docs_url: str


def load_spec() -> dict:
    """The OpenAPI description, parsed once per process."""
    with _lock:
        if "spec" not in _state:
            if not SPEC_PATH.exists():
                raise FileNotFoundError(
                    f"{SPEC_PATH} is missing: run `npm ci` in tests/ to install @octokit/openapi"
                )
            spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
            _state["spec"] = spec
            _state["routes"] = _compile_routes(spec)
        return _state["spec"]


def _compile_routes(spec: dict) -> dict[str, list[tuple[re.Pattern, str]]]:
    """Per method, the path templates as regexes, most literal first."""
    routes: dict[str, list[tuple[tuple, re.Pattern, str]]] = {}
    for template, item in spec["paths"].items():
        segments = template.strip("/").split("/")
        pattern = "/".join(
            "[^/]+" if seg.startswith("{") and seg.endswith("}") else re.escape(seg)
            for seg in segments
        )
        # A literal segment beats a parameter in the same place (/check-runs/{id} vs /{x}/...).
        rank = tuple(seg.startswith("{") for seg in segments)
        for method in item:
            if method in ("get", "post", "patch", "put", "delete"):
                routes.setdefault(method.upper(), []).append(
                    (rank, re.compile(f"^/{pattern}$"), template)
                )
    return {m: [(rx, t) for _, rx, t in sorted(v, key=lambda r: r[0])] for m, v in routes.items()}


def find_operation(method: str, path: str) -> Operation | None:
    """The operation of the description that `method path` calls, or None."""
    spec = load_spec()
    for regex, template in _state["routes"].get(method.upper(), []):
        if regex.match(path):
            op = spec["paths"][template][method.lower()]
            body = op.get("requestBody") or {}
            schema = (body.get("content") or {}).get("application/json", {}).get("schema")
            return Operation(
                method=method.upper(),
                template=template,
                operation_id=op.get("operationId", ""),
                body_schema=schema,
                body_required=bool(body.get("required")),
                docs_url=(op.get("externalDocs") or {}).get("url", "https://docs.github.com/rest"),
            )
    return None


def request_body_errors(method: str, path: str, body) -> list[jsonschema.ValidationError]:
    """The ways `body` breaks the requestBody schema of the operation; [] when it fits."""
    operation = find_operation(method, path)
    if operation is None or operation.body_schema is None:
        return []
    validator = _validator(_pointer("paths", operation.template, operation.method.lower(),
                                    "requestBody", "content", "application/json", "schema"))
    return sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))


def response_body_errors(method: str, path: str, status: int,
                         body) -> list[jsonschema.ValidationError]:
    """The ways `body` breaks the schema of the operation's `status` answer; [] when it fits."""
    operation = find_operation(method, path)
    if operation is None:
        raise LookupError(f"the description has no {method} {path}")
    where = ("paths", operation.template, method.lower(), "responses", str(status))
    answer = load_spec()["paths"][operation.template][method.lower()]["responses"][str(status)]
    if "$ref" in answer:  # a shared answer: #/components/responses/accepted
        where = tuple(answer["$ref"].removeprefix("#/").split("/"))
        where = tuple(part.replace("~1", "/").replace("~0", "~") for part in where)
    validator = _validator(_pointer(*where, "content", "application/json", "schema"))
    return sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))


def _pointer(*parts: str) -> str:
    """A JSON pointer (without the leading /) to `parts` in the description."""
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


@functools.cache
def _validator(pointer: str) -> jsonschema.Draft4Validator:
    """A compiled validator for the schema at `pointer`, `$ref`s resolved in the description."""
    return jsonschema.Draft4Validator(
        {"$ref": f"{_SPEC_URI}#/{pointer}"},
        registry=_registry(),
        format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER,
    )


def _registry() -> referencing.Registry:
    with _lock:
        if "registry" not in _state:
            spec = _state.get("spec")
            if spec is None:  # pragma: no cover - find_operation always loads it first
                raise RuntimeError("load_spec() first")
            document = _with_nullable(copy.deepcopy({"paths": spec["paths"],
                                                     "components": spec["components"]}))
            resource = referencing.jsonschema.DRAFT4.create_resource(document)
            _state["registry"] = referencing.Registry().with_resource(_SPEC_URI, resource)
        return _state["registry"]


def _with_nullable(node):
    """Rewrite OpenAPI's `nullable: true` into JSON Schema's `null` type, in place."""
    if isinstance(node, dict):
        for value in node.values():
            _with_nullable(value)
        if node.get("nullable") is True:
            kind = node.get("type")
            if isinstance(kind, str):
                node["type"] = [kind, "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
            for combinator in ("anyOf", "oneOf"):
                if combinator in node:
                    node[combinator] = [*node[combinator], {"type": "null"}]
            if "allOf" in node:
                node["anyOf"] = [{"allOf": node.pop("allOf")}, {"type": "null"}]
    elif isinstance(node, list):
        for item in node:
            _with_nullable(item)
    return node


def describe(error: jsonschema.ValidationError) -> str:
    """One line in the manner of GitHub's 422 messages: which field, what is wrong."""
    where = "/".join(str(p) for p in error.absolute_path) or "body"
    shown = repr(error.instance)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"{where}: {shown} is not a member of [{allowed}]"
    if error.validator == "maxLength":
        return f"{where}: is too long ({len(error.instance)} characters, maximum is " \
               f"{error.validator_value})"
    if error.validator in ("anyOf", "oneOf") and error.context:
        return "; or ".join(sorted({describe(e) for e in error.context}))
    if error.validator in ("required", "maxItems", "type", "format"):
        return f"{where}: {error.message.replace(repr(error.instance), shown)}"
    return f"{where}: {shown} is invalid ({error.validator} {error.validator_value!r})"
