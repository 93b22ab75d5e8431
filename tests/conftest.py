"""Fixtures shared by tests/unit and tests/playbooks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `make test` fetches the compose v2 CLI first and sets this: there a missing CLI, daemon or
# image is a failure, not a skip (CI must never count a skipped compose check as a pass).
REQUIRED = os.environ.get("GPUSERVE_TESTS_REQUIRE_DOCKER") == "1"


def missing(reason: str) -> None:
    """Skip a test that needs Docker tools outside `make test`; fail it inside."""
    if REQUIRED:
        pytest.fail(f"{reason} (GPUSERVE_TESTS_REQUIRE_DOCKER=1: make test provides it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def compose_v2() -> list[str]:
    """A compose v2 CLI: the binary tests/fixtures/compose_v2/fetch.sh copies out of Debian 13's
    docker-compose package (2.26) (or $GPUSERVE_COMPOSE_V2), else `docker compose`."""
    fetched = os.environ.get("GPUSERVE_COMPOSE_V2", str(ROOT / ".cache/compose-v2/docker-compose"))
    if Path(fetched).is_file() and os.access(fetched, os.X_OK):
        return [fetched]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    missing(
        "no compose v2 CLI here (Debian 12 ships docker-compose 1.29 only): "
        "run tests/fixtures/compose_v2/fetch.sh or set GPUSERVE_COMPOSE_V2"
    )
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def debian13_test_image() -> str:
    """The gpuserve-test/debian13 image of `make images`, on a Docker daemon that answers."""
    image = "gpuserve-test/debian13:latest"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        missing(f"no Docker daemon or no {image} image (make images)")
    return image
