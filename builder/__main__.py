"""``python -m builder build ...``: build one artifact and print the pushed reference.

The build log goes to stderr as it runs; stdout holds only the reference, so
``ref=$(python -m builder build ...)`` works; for ``--type ami`` it holds the
AMI id and its region (``ami-0123456789abcdef0 eu-west-1``). Exit codes: 0
pushed, 1 the build, the push, the engine or AWS failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from builder import (
    SUPPORTED_TYPES,
    AmiResult,
    BuilderError,
    ContextNotFound,
    DockerfileNotFound,
    InvalidReference,
    UnsupportedArtifactType,
    UnsupportedBaseImage,
    build_artifact,
)
from builder.settings import EngineSettings

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
_BAD_INPUT = (InvalidReference, UnsupportedArtifactType, ContextNotFound, DockerfileNotFound,
              UnsupportedBaseImage)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other error of this CLI
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def make_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m builder",
        description="Build a Docker image from a directory and push it to a registry.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser(
        "build",
        help="build and push one artifact",
        description=(
            "Build CONTEXT into REGISTRY/NAME:VERSION and push it. The build log goes to "
            "stderr; the pushed reference REGISTRY/NAME:VERSION@sha256:... alone goes to "
            "stdout. Registry credentials come from REGISTRY_USERNAME and REGISTRY_PASSWORD. "
            "Exit 0 when pushed, 1 when the build, the push or the engine failed, 2 on bad input."
        ),
    )
    build.add_argument("--service", required=True, metavar="NAME",
                       help="image name: lowercase letters, digits and . _ - separators")
    build.add_argument("--version", required=True, metavar="VERSION",
                       help="image tag, e.g. 1.4.0 (letters, digits, _ . -; at most 128)")
    build.add_argument("--type", default="docker", metavar="TYPE", dest="artifact_type",
                       help=f"artifact type: {' | '.join(SUPPORTED_TYPES)} (default: docker). "
                            "ami: a bootable disk registered as the AMI <NAME>-<VERSION> in "
                            "AWS_DEFAULT_REGION; the image stays local unless --push")
    build.add_argument("--context", default=".", metavar="DIR",
                       help="build context directory (default: .)")
    build.add_argument("--dockerfile", default="Dockerfile", metavar="PATH",
                       help="Dockerfile, relative to the context (default: Dockerfile)")
    build.add_argument("--registry", default=environ.get("REGISTRY") or "localhost:5000",
                       metavar="HOST:PORT",
                       help="registry to push to (default: $REGISTRY or localhost:5000)")
    build.add_argument("--network", default=environ.get("BUILD_NETWORK") or None,
                       metavar="MODE",
                       help="network mode of the build containers: host, none, ... "
                            "(default: $BUILD_NETWORK or the engine's default)")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]",
                       dest="build_args",
                       help="build argument, repeatable; KEY alone takes the value from the "
                            "environment")
    build.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       dest="labels", help="extra image label, repeatable")
    build.add_argument("--revision", metavar="SHA",
                       help="source revision, stored as org.opencontainers.image.revision")
    build.add_argument("--source", metavar="URL",
                       help="source URL, stored as org.opencontainers.image.source")
    build.add_argument("--no-cache", action="store_true", dest="nocache",
                       help="do not use the build cache")
    build.add_argument("--push", action="store_true",
                       help="ami: push the Docker image to the registry too")
    build.add_argument("--keep-disk", metavar="PATH", dest="disk_path",
                       help="ami: keep the raw disk at PATH (to boot it in QEMU, say)")
    return parser


def parse_pairs(items: Sequence[str], environ: Mapping[str, str], *, what: str) -> dict[str, str]:
    """``["K=V", "K2"]`` -> ``{"K": "V", "K2": environ["K2"]}``."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"{what} {item!r} has no name; write KEY=VALUE")
        if not sep:
            if key not in environ:
                raise ValueError(f"{what} {key!r} has no value and {key} is not set; "
                                 f"write {key}=VALUE")
            value = environ[key]
        pairs[key] = value
    return pairs


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = make_parser(environ).parse_args(argv)
    try:
        build_args = parse_pairs(args.build_args, environ, what="--build-arg")
        labels = parse_pairs(args.labels, {}, what="--label")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = build_artifact(
            args.service,
            args.version,
            args.artifact_type,
            context=args.context,
            dockerfile=args.dockerfile,
            registry=args.registry,
            network=args.network,
            build_args=build_args,
            labels=labels,
            on_log=progress,
            revision=args.revision,
            source=args.source,
            username=environ.get("REGISTRY_USERNAME") or None,
            password=environ.get("REGISTRY_PASSWORD") or None,
            nocache=args.nocache,
            engine_settings=EngineSettings.from_environ(environ),
            push=args.push,
            disk_path=args.disk_path,
        )
    except BuilderError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, _BAD_INPUT) else EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, AmiResult):
        print(f"{result.image_id} {result.region}")
    else:
        print(result.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
