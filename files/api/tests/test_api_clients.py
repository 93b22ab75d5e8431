"""Both upstream client implementations (native, httpx) behave the same."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_env import MODEL
from gpuserve_api.procs import Proc, free_port, start_gateway, start_sim

CLIENTS = ["native", "httpx", "aiohttp"]


def _running(sim: Proc) -> float:
    text = httpx.get(sim.url + "/metrics").text
    m = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert m
    return float(m.group(1))


@pytest.fixture(scope="module")
def paced_sim(workdir: Path) -> Iterator[Proc]:
    proc = start_sim(workdir, model=MODEL, ttft_ms=5, itl_ms=20, hang_rate=0.0)
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=CLIENTS)
def client_gateway(
    request: pytest.FixtureRequest,
    workdir: Path,
    paced_sim: Proc,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Proc]]:
    sock = str(tmp_path_factory.mktemp("uds") / "sim.sock")
    uds_sim = start_sim(workdir, model="uds-model", uds=sock, ttft_ms=1, itl_ms=1)
    gw = start_gateway(
        workdir,
        {
            "upstreams": [
                {"name": MODEL, "base_url": paced_sim.url, "client": request.param},
                {"name": "uds-model", "uds": sock, "client": request.param},
                {
                    "name": "down-model",
                    "base_url": f"http://127.0.0.1:{free_port()}",
                    "client": request.param,
                    "required": False,
                },
            ]
        },
        ready_path="/ready",
    )
    yield request.param, gw
    gw.stop()
    uds_sim.stop()


def test_completion_and_stream(client_gateway: tuple[str, Proc]) -> None:
    _, gw = client_gateway
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4}
    r = httpx.post(gw.url + "/v1/completions", json=body)
    assert r.status_code == 200
    assert len(r.json()["choices"][0]["text"].split()) == 4
    r = httpx.post(gw.url + "/v1/completions", json={**body, "stream": True})
    assert r.text.count("data: ") == 5
    assert r.text.endswith("data: [DONE]\n\n")


def test_unix_socket_upstream(client_gateway: tuple[str, Proc]) -> None:
    _, gw = client_gateway
    r = httpx.post(
        gw.url + "/v1/completions", json={"model": "uds-model", "prompt": "x", "max_tokens": 2}
    )
    assert r.status_code == 200
    assert r.json()["model"] == "uds-model"


def test_down_upstream_503_and_optional_for_ready(client_gateway: tuple[str, Proc]) -> None:
    _, gw = client_gateway
    r = httpx.post(gw.url + "/v1/completions", json={"model": "down-model", "prompt": "x"})
    assert r.status_code == 503
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 200  # down-model is not required
    assert ready.json()["models"]["down-model"]["ready"] is False
    models = {m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]}
    assert models == {MODEL, "uds-model"}  # listing survives one upstream down


def test_disconnect_aborts_upstream(client_gateway: tuple[str, Proc], paced_sim: Proc) -> None:
    _, gw = client_gateway
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(timeout=10) as c,
        c.stream("POST", gw.url + "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert _running(paced_sim) == 1
    deadline = time.monotonic() + 2
    while _running(paced_sim) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _running(paced_sim) == 0


def test_keepalive_connection_reuse_survives_upstream_idle_close(
    client_gateway: tuple[str, Proc],
) -> None:
    # uvicorn (vLLM) drops idle keep-alive connections after 5 s; the pool must not
    # hand out a dead one.
    _, gw = client_gateway
    body = {"model": "uds-model", "prompt": "x", "max_tokens": 1}
    assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
    time.sleep(5.5)
    assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
