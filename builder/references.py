"""Image names, tags, and the meaning of the engine's build and push streams.

Pure: no Docker, network, disk or clock. Everything here takes values and
returns values, so it is tested without an engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from builder.errors import InvalidReference, PushFailed

# Docker's reference grammar (distribution/reference/regexp.go):
#   path-component := alpha-numeric (separator alpha-numeric)*
#   separator      := /[_.]|__|[-]*/
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# distribution/reference: NameTotalLengthMax, counted with the registry host.
NAME_TOTAL_LENGTH_MAX = 255

NAME_RULE = (
    "an image name is lowercase letters and digits, in parts separated by '.', '_', '__' "
    "or '-' (never at the start or end), optionally in '/'-separated paths"
)
TAG_RULE = (
    "a Docker tag is 1 to 128 letters, digits, '_', '.' and '-', and does not start "
    "with '.' or '-'"
)


def validate_service_name(name: str, registry: str = "") -> str:
    """Return ``name`` when it is a valid image name, else raise InvalidReference."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        hint = ""
        if isinstance(name, str) and re.search(r"[A-Za-z0-9]", name):
            hint = f" (try '{image_name_for(name)}')"
        raise InvalidReference(
            f"Invalid service name {name!r}: {NAME_RULE}{hint}.", value=str(name)
        )
    full = f"{registry}/{name}" if registry else name
    if len(full) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"Invalid service name {name!r}: '{full}' is {len(full)} characters long, "
            f"and an image name may be at most {NAME_TOTAL_LENGTH_MAX}.",
            value=name,
        )
    return name


def validate_version(version: str) -> str:
    """Return ``version`` when it is a valid Docker tag, else raise InvalidReference."""
    if isinstance(version, str) and _TAG_RE.fullmatch(version):
        return version
    hint = ""
    if isinstance(version, str) and "+" in version:
        hint = f" (SemVer build metadata is published with '+' written as '-': " \
               f"'{version.replace('+', '-')}')"
    raise InvalidReference(f"Invalid version {version!r}: {TAG_RULE}{hint}.", value=str(version))


def image_name_for(text: str) -> str:
    """Make any repository name a valid image name: ``"Hello-World"`` -> ``"hello-world"``.

    Lowercases, turns every other character into '-', collapses runs of
    separators and strips them from the ends of each '/'-separated part.
    Raises InvalidReference when nothing usable is left.
    """
    parts = []
    for part in text.lower().split("/"):
        part = re.sub(r"[^a-z0-9._-]", "-", part)
        # A run of separators becomes one: the run itself when Docker allows it
        # ("__", "--"), else '-'.
        part = re.sub(r"[._-]{2,}", lambda m: m.group() if re.fullmatch(r"__|-+", m.group())
                      else "-", part)
        part = part.strip("._-")
        if part:
            parts.append(part)
    name = "/".join(parts)[:NAME_TOTAL_LENGTH_MAX - 64].strip("._-/")
    if not name:
        raise InvalidReference(
            f"Cannot make an image name of {text!r}: it has no letters or digits.", value=text
        )
    return name


def image_tag(registry: str, name: str, version: str) -> str:
    """``"localhost:5000/orders:1.4.0"``."""
    return f"{registry}/{name}:{version}"


# --- labels ------------------------------------------------------------------

_ESCAPE_DIRECTIVE = re.compile(r"#\s*escape\s*=\s*(\S)", re.IGNORECASE)


def dockerfile_with_labels(dockerfile: str, labels: Mapping[str, str]) -> str:
    """``dockerfile`` with one final ``LABEL`` instruction that sets ``labels``.

    One instruction, not the engine's ``labels`` build parameter: the classic
    builder turns that parameter into one LABEL step per label, and every step
    costs a container commit.
    """
    if not labels:
        return dockerfile
    escape = "\\"
    for line in dockerfile.splitlines():  # parser directives come first, before anything else
        match = _ESCAPE_DIRECTIVE.match(line.strip())
        if match:
            escape = match.group(1)
        if line.strip() and not line.lstrip().startswith("#"):
            break

    def quote(text: str) -> str:
        text = " ".join(str(text).splitlines())
        for special in (escape, '"', "$"):  # '$' would start a variable
            text = text.replace(special, escape + special)
        return f'"{text}"'

    pairs = " ".join(f"{quote(key)}={quote(value)}" for key, value in sorted(labels.items()))
    return f"{dockerfile.rstrip()}\nLABEL {pairs}\n"


# --- the build stream --------------------------------------------------------


@dataclass(frozen=True)
class BuildChunk:
    """What one JSON chunk of ``POST /build`` says."""

    text: str = ""
    image_id: str | None = None
    error: str | None = None


def parse_build_chunk(chunk: dict) -> BuildChunk:
    """Read one decoded chunk of the build stream."""
    if "error" in chunk or "errorDetail" in chunk:
        detail = chunk.get("errorDetail") or {}
        message = chunk.get("error") or detail.get("message") or "unknown build error"
        return BuildChunk(error=str(message).strip())
    aux = chunk.get("aux")
    if isinstance(aux, dict) and aux.get("ID"):
        return BuildChunk(image_id=aux["ID"])
    if "stream" in chunk:
        return BuildChunk(text=str(chunk["stream"]))
    if "status" in chunk:  # e.g. a base image being pulled
        prefix = f"{chunk['id']}: " if chunk.get("id") else ""
        return BuildChunk(text=f"{prefix}{chunk['status']}\n")
    return BuildChunk()


def step_of(line: str) -> str | None:
    """The step a log line starts (``"Step 3/5 : RUN make"``), or None."""
    if line.startswith("Step ") and " : " in line:
        return line.strip()
    return None


def build_failure_message(step: str | None, error: str) -> str:
    """The sentence of a BuildFailed."""
    error = error.strip().rstrip(".")
    if step:
        return f"The build failed at {step}: {error}."
    return f"The build failed before its first step: {error}; check the Dockerfile."


# The classic builder's words for a step whose process ended with SIGKILL (128 + 9):
# under a memory limit, the kernel's OOM killer.
_KILLED = re.compile(r"returned a non-zero code: 137\b")


def killed(error: str) -> bool:
    """Whether the engine's error says the step's process was killed (exit code 137)."""
    return bool(_KILLED.search(error))


def out_of_memory_message(step: str | None, memory: int) -> str:
    """The sentence of a BuildOutOfMemory."""
    where = f"The build step {step}" if step else "A build step"
    return (f"{where} was killed (exit code 137): it ran out of memory (every build step "
            f"may use at most {memory // 1024**2} MiB).")


# --- the push stream ---------------------------------------------------------


@dataclass(frozen=True)
class PushChunk:
    """What one JSON chunk of ``POST /images/{name}/push`` says."""

    text: str = ""
    digest: str | None = None
    size: int | None = None
    error: str | None = None


def parse_push_chunk(chunk: dict) -> PushChunk:
    """Read one decoded chunk of the push stream (a 200 answer may still carry an error)."""
    if "error" in chunk or "errorDetail" in chunk:
        detail = chunk.get("errorDetail") or {}
        message = chunk.get("error") or detail.get("message") or "unknown push error"
        return PushChunk(error=str(message).strip())
    aux = chunk.get("aux")
    if isinstance(aux, dict) and aux.get("Digest"):
        size = aux.get("Size")
        return PushChunk(digest=aux["Digest"], size=size if isinstance(size, int) else None)
    # Progress bars ("Pushing [==>  ]") are noise in a log; the state changes are not.
    if "status" in chunk and not chunk.get("progress"):
        prefix = f"{chunk['id']}: " if chunk.get("id") else ""
        return PushChunk(text=f"{prefix}{chunk['status']}\n")
    return PushChunk()


_UNREACHABLE = (
    "connection refused", "no such host", "i/o timeout", "network is unreachable",
    "no route to host", "connection reset", "timeout exceeded", ": eof", "unexpected eof",
    "server gave http response to https client", "tls:", "x509:",
)
_AUTH = (
    "unauthorized", "authentication required", "denied", "no basic auth credentials",
    "forbidden", "insufficient_scope",
)


def classify_push_error(detail: str) -> str:
    """``"unreachable"``, ``"auth"`` or ``"refused"`` for the engine's push error text."""
    text = detail.lower()
    if any(marker in text for marker in _AUTH):
        return "auth"
    if any(marker in text for marker in _UNREACHABLE) or "dial tcp" in text:
        return "unreachable"
    return "refused"


def push_failed(image: str, registry: str, detail: str, log_tail: str = "") -> PushFailed:
    """A PushFailed whose sentence says what broke and what to do about it."""
    reason = classify_push_error(detail)
    detail = detail.strip().rstrip(".")
    if reason == "unreachable":
        if "http response to https client" in detail.lower():
            advice = (f"the engine talks HTTPS to it; serve the registry over TLS or add "
                      f"{registry} to the engine's insecure-registries")
        else:
            advice = "check that the registry runs and that REGISTRY names it as host:port"
        message = f"Could not push {image}: the registry {registry} is unreachable ({detail}); " \
                  f"{advice}."
    elif reason == "auth":
        message = (f"The registry {registry} refused to let us push {image} ({detail}); set "
                   f"REGISTRY_USERNAME and REGISTRY_PASSWORD to an account allowed to push there.")
    else:
        message = (f"The registry {registry} rejected the push of {image} ({detail}); check the "
                   f"registry's log and storage.")
    return PushFailed(message, reason=reason, image=image, detail=detail, log_tail=log_tail)
