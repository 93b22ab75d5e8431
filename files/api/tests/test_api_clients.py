"""The upstream client: TCP and unix sockets, a down upstream, aborts, keep-alive reuse."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_env import MODEL
from gpuserve_sim.procs import Proc, free_port, start_gateway, start_sim


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


@pytest.fixture(scope="module")
def gw(
    workdir: Path,
    paced_sim: Proc,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    sock = str(tmp_path_factory.mktemp("uds") / "sim.sock")
    uds_sim = start_sim(workdir, model="uds-model", uds=sock, ttft_ms=1, itl_ms=1)
    proc = start_gateway(
        workdir,
        {
            "upstreams": [
                {"name": MODEL, "base_url": paced_sim.url},
                {"name": "uds-model", "uds": sock},
                {
                    "name": "down-model",
                    "base_url": f"http://127.0.0.1:{free_port()}",
                    "required": False,
                },
            ]
        },
        ready_path="/ready",
    )
    yield proc
    proc.stop()
    uds_sim.stop()


def test_completion_and_stream(gw: Proc) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4}
    r = httpx.post(gw.url + "/v1/completions", json=body)
    assert r.status_code == 200
    assert len(r.json()["choices"][0]["text"].split()) == 4
    r = httpx.post(gw.url + "/v1/completions", json={**body, "stream": True})
    assert r.text.count("data: ") == 5
    assert r.text.endswith("data: [DONE]\n\n")


def test_unix_socket_upstream(gw: Proc) -> None:
    r = httpx.post(
        gw.url + "/v1/completions", json={"model": "uds-model", "prompt": "x", "max_tokens": 2}
    )
    assert r.status_code == 200
    assert r.json()["model"] == "uds-model"


def test_down_upstream_503_and_optional_for_ready(gw: Proc) -> None:
    r = httpx.post(gw.url + "/v1/completions", json={"model": "down-model", "prompt": "x"})
    assert r.status_code == 503
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 200  # down-model is not required
    assert ready.json()["models"]["down-model"]["ready"] is False
    models = {m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]}
    assert models == {MODEL, "uds-model"}  # listing survives one upstream down


def test_disconnect_aborts_upstream(gw: Proc, paced_sim: Proc) -> None:
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
    gw: Proc,
) -> None:
    # uvicorn (vLLM) drops idle keep-alive connections after 5 s; the pool must not
    # hand out a dead one.
    body = {"model": "uds-model", "prompt": "x", "max_tokens": 1}
    assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
    time.sleep(5.5)
    assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
