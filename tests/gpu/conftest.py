"""GPU tier: real vLLM behind the gateway, on a GPU host with the built venv.

Skipped (with the reason) where there is no NVIDIA GPU, no vLLM or no model directory:
CI never has a GPU. Environment:
  GPUSERVE_GPU_MODEL_DIR   model directory to serve (required)
  GPUSERVE_VLLM_URL        an already running vLLM server for that model (optional;
                           otherwise the tests start one and stop it at the end)
  GPUSERVE_SERVED_NAME     served model name (default phi-2)
  GPUSERVE_GATEWAY_URL     an already deployed gateway, e.g. the role's nginx over TLS
                           (tests/gpu/machine/validate.sh; SSL_CERT_FILE names its certificate,
                           and its API key is sk-gpu-validation with a per-key cap of 4);
                           otherwise the tests start a gateway and stop it at the end
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpu_settings import KEY, SERVED


def skip_reason() -> str | None:
    gpus = Path("/proc/driver/nvidia/gpus")
    if not gpus.is_dir() or not any(gpus.iterdir()):
        return "no NVIDIA GPU on this host (/proc/driver/nvidia/gpus is empty or absent)"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not importable in this Python (run with the built venv)"
    if not os.environ.get("GPUSERVE_GPU_MODEL_DIR"):
        return "GPUSERVE_GPU_MODEL_DIR is not set (the model directory to serve)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu")


@pytest.fixture(scope="session")
def vllm_url(workdir: Path) -> Iterator[str]:
    """A real vLLM OpenAI server: the given one, or one started here."""
    from gpuserve_sim.procs import Proc, free_port, wait_ready

    given = os.environ.get("GPUSERVE_VLLM_URL")
    if given:
        yield given.rstrip("/")
        return
    port = free_port()
    log_path = workdir / "vllm.log"
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        os.environ["GPUSERVE_GPU_MODEL_DIR"],
        "--served-model-name",
        SERVED,
        "--dtype",
        "float16",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.85",
    ]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, log_path, f"http://127.0.0.1:{port}")
    wait_ready(proc.url, proc, timeout=900)
    yield proc.url
    proc.stop(timeout=30)


@pytest.fixture(scope="session")
def gateway_url(workdir: Path, vllm_url: str) -> Iterator[str]:
    """The gateway in front of vLLM, with a small per-key cap for the overload test."""
    given = os.environ.get("GPUSERVE_GATEWAY_URL")
    if given:
        yield given.rstrip("/")
        return
    from gpuserve_api.auth import hash_key
    from gpuserve_sim.procs import start_gateway

    keys = workdir / "keys.yml"
    keys.write_text(f"keys:\n  - name: validation\n    sha256: {hash_key(KEY)}\n")
    proc = start_gateway(
        workdir,
        {
            "upstreams": [{"name": SERVED, "aliases": ["microsoft/phi-2"], "base_url": vllm_url}],
            "auth": {"enabled": True, "keys_file": str(keys)},
            "limits": {"max_in_flight_per_key": 4, "max_tokens": 4096},
        },
        ready_path="/ready",
    )
    yield proc.url
    proc.stop()
