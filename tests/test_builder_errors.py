"""Every way build_artifact fails, each with a sentence the user can act on."""

from __future__ import annotations

import pytest
from builder_helpers import BASE, closed_port, make_context

from builder import (
    BuilderError,
    BuildFailed,
    ContextNotFound,
    DockerfileNotFound,
    EngineSettings,
    EngineUnreachable,
    InvalidReference,
    PushFailed,
    UnsupportedArtifactType,
    build_artifact,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def engine_nowhere():
    """Engine settings naming a loopback port nobody listens on."""
    return EngineSettings(host=f"tcp://127.0.0.1:{closed_port()}")


@pytest.fixture
def context(tmp_path):
    return make_context(tmp_path / "ctx", BASE)


@pytest.mark.parametrize("name", ["Orders", "orders_", "-orders", "or ders", "orders:1", ""])
def test_bad_service_name_is_refused_before_docker(name, context, engine_nowhere):
    """A bad image name is refused, quoting it and the rule, before any engine is asked."""
    with pytest.raises(InvalidReference) as caught:
        build_artifact(name, "1.0.0", context=str(context),
                       engine_settings=engine_nowhere)
    assert repr(name) in str(caught.value)
    assert "lowercase" in str(caught.value)
    assert caught.value.blame == "repository"


@pytest.mark.parametrize("version", ["1.2.3+build.5", ".1", "-rc", "v" * 129, "1 0", ""])
def test_bad_version_is_refused_before_docker(version, context, engine_nowhere):
    """A version that is not a Docker tag is refused, quoting it and the rule."""
    with pytest.raises(InvalidReference) as caught:
        build_artifact("orders", version, context=str(context),
                       engine_settings=engine_nowhere)
    assert repr(version) in str(caught.value)
    assert "Docker tag" in str(caught.value)


def test_semver_build_metadata_error_suggests_the_dash_form(context, engine_nowhere):
    """'1.2.3+build.5' is refused with the published spelling '1.2.3-build.5'."""
    with pytest.raises(InvalidReference, match=r"'1\.2\.3-build\.5'"):
        build_artifact("orders", "1.2.3+build.5", context=str(context),
                       engine_settings=engine_nowhere)


def test_an_ami_name_ec2_would_refuse_is_refused_before_any_work(context, engine_nowhere):
    """type 'ami': `<service>-<version>` over EC2's 128 characters fails as bad input."""
    with pytest.raises(InvalidReference, match="AMI name .* is not valid"):
        build_artifact("orders", "1." + "0" * 126, "ami", context=str(context),
                       engine_settings=engine_nowhere)


def test_unknown_type_lists_supported_types(context, engine_nowhere):
    """An unknown type names the supported ones."""
    with pytest.raises(UnsupportedArtifactType, match="supported types: docker, ami"):
        build_artifact("orders", "1.0.0", "zip", context=str(context),
                       engine_settings=engine_nowhere)


def test_missing_context(tmp_path, engine_nowhere):
    """A context directory that does not exist is named in the error."""
    with pytest.raises(ContextNotFound, match="does not exist") as caught:
        build_artifact("orders", "1.0.0", context=str(tmp_path / "nope"),
                       engine_settings=engine_nowhere)
    assert "nope" in str(caught.value) and caught.value.blame == "repository"


def test_missing_dockerfile(tmp_path, engine_nowhere):
    """No Dockerfile where it was said to be: the error gives the path it looked at."""
    context = make_context(tmp_path / "ctx", None, {"app.py": ""})
    with pytest.raises(DockerfileNotFound) as caught:
        build_artifact("orders", "1.0.0", context=str(context), dockerfile="build/Dockerfile",
                       engine_settings=engine_nowhere)
    assert str(context / "build" / "Dockerfile") in str(caught.value)
    assert caught.value.blame == "repository"


def test_failing_run_step_names_the_step_and_keeps_its_output(registry, published, unique_name,
                                                              tmp_path):
    """A failing RUN raises BuildFailed with the step and the log tail holding its output."""
    context = make_context(
        tmp_path / "ctx",
        BASE + "RUN echo fine\nRUN echo 'ERROR: No matching distribution for flask==99' && exit 3\n"
               "RUN echo never\n",
    )
    published.add(unique_name, "1.0.0")
    with pytest.raises(BuildFailed) as caught:
        build_artifact(unique_name, "1.0.0", context=str(context), registry=registry.address,
                       network="host")
    error = caught.value
    assert error.step.startswith("Step 3/")
    assert "RUN echo 'ERROR: No matching distribution for flask==99' && exit 3" in error.step
    assert "ERROR: No matching distribution for flask==99" in error.log_tail
    assert "returned a non-zero code: 3" in str(error)
    assert str(error).startswith("The build failed at Step 3/")
    assert error.blame == "repository"
    assert registry.tags(unique_name) == []


def test_broken_dockerfile_fails_before_the_first_step(registry, unique_name, tmp_path):
    """An unknown instruction fails the build with the engine's parse error."""
    context = make_context(tmp_path / "ctx", BASE + "RUNN echo typo\n")
    with pytest.raises(BuildFailed, match="(?i)unknown instruction: RUNN") as caught:
        build_artifact(unique_name, "1.0.0", context=str(context), registry=registry.address,
                       network="host")
    assert caught.value.step is None


def test_push_to_a_registry_that_is_down(published, unique_name, tmp_path):
    """A push to a closed port raises PushFailed saying the registry is unreachable."""
    address = f"127.0.0.1:{closed_port()}"
    context = make_context(tmp_path / "ctx", BASE)
    published.add(unique_name, "1.0.0", address=address)
    with pytest.raises(PushFailed) as caught:
        build_artifact(unique_name, "1.0.0", context=str(context), registry=address,
                       network="host")
    error = caught.value
    assert error.reason == "unreachable"
    assert f"the registry {address} is unreachable" in str(error)
    assert "connection refused" in error.detail
    assert error.image == f"{address}/{unique_name}:1.0.0"
    assert error.blame == "infrastructure"


def test_engine_unreachable_says_how_to_reach_it(context, engine_nowhere):
    """With no engine at DOCKER_HOST, the error names it and says what to do."""
    with pytest.raises(EngineUnreachable, match="DOCKER_HOST") as caught:
        build_artifact("orders", "1.0.0", context=str(context), engine_settings=engine_nowhere)
    assert "tcp://127.0.0.1:" in str(caught.value)
    assert caught.value.blame == "infrastructure"
    assert isinstance(caught.value, BuilderError)
