"""Real processes on loopback: one simulator and one gateway shared by most tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_env import ALIAS, KEY_ALICE, KEY_BOB, LIMITS, MODEL
from gpuserve_api.auth import hash_key
from gpuserve_sim.procs import Proc, start_gateway, start_sim


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="session")
def keys_file(workdir: Path) -> Path:
    path = workdir / "keys.yml"
    path.write_text(
        "keys:\n"
        f"  - name: alice\n    sha256: {hash_key(KEY_ALICE)}\n"
        f"  - name: bob\n    sha256: {hash_key(KEY_BOB)}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def sim(workdir: Path) -> Iterator[Proc]:
    proc = start_sim(
        workdir, model=MODEL, ttft_ms=10, itl_ms=2, max_num_seqs=64, max_model_len=512, seed=7
    )
    yield proc
    proc.stop()


def upstream(sim: Proc, **extra: object) -> dict:
    return {"name": MODEL, "aliases": [ALIAS], "base_url": sim.url, **extra}


@pytest.fixture(scope="session")
def gateway(workdir: Path, sim: Proc, keys_file: Path) -> Iterator[Proc]:
    proc = start_gateway(
        workdir,
        {
            "upstreams": [upstream(sim)],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": LIMITS,
        },
        ready_path="/ready",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY_ALICE}"}
