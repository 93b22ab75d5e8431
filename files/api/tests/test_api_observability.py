"""Structured logs and gateway metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from api_env import KEY_ALICE, MODEL
from gpuserve_sim.procs import Proc, start_gateway

AUTH = {"Authorization": f"Bearer {KEY_ALICE}"}


def _log_line(proc: Proc, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in proc.log().splitlines():
            if request_id in line and '"msg":"request"' in line:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}:\n{proc.log()[-2000:]}")


def test_request_log_is_json_without_prompt_text(gateway: Proc) -> None:
    secret = "purple-elephant-prompt"
    r = httpx.post(
        gateway.url + "/v1/completions",
        headers={**AUTH, "X-Request-ID": "log-1"},
        json={"model": MODEL, "prompt": secret, "max_tokens": 4},
    )
    assert r.status_code == 200
    entry = _log_line(gateway, "log-1")
    assert entry["model"] == MODEL
    assert entry["key"] == "alice"
    assert entry["client"] == "127.0.0.1"
    assert entry["status"] == 200
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (1, 4)
    assert entry["duration_ms"] > 0
    assert secret not in gateway.log()
    completion = r.json()["choices"][0]["text"]
    assert completion not in gateway.log()


def test_request_log_includes_text_only_when_enabled(workdir: Path, sim: Proc) -> None:
    gw = start_gateway(
        workdir,
        {"upstreams": [{"name": MODEL, "base_url": sim.url}], "logging": {"log_prompts": True}},
    )
    try:
        body = {"model": MODEL, "prompt": "visible-prompt", "max_tokens": 3, "stream": True}
        r = httpx.post(gw.url + "/v1/completions", json=body, headers={"X-Request-ID": "log-2"})
        assert r.status_code == 200
        entry = _log_line(gw, "log-2")
        assert entry["prompt"] == "visible-prompt"
        assert len(entry["completion"].split()) == 3
        assert entry["chunks"] == 3
    finally:
        gw.stop()


def test_metrics_count_requests_chunks_tokens(gateway: Proc) -> None:
    body = {
        "model": MODEL,
        "prompt": "a b",
        "max_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    before = httpx.get(gateway.url + "/metrics").text
    r = httpx.post(gateway.url + "/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 200
    after = httpx.get(gateway.url + "/metrics").text

    def value(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    chunks = 'gpuserve_gateway_stream_chunks_total{model="sim-model",route="/v1/completions"}'
    assert value(after, chunks) - value(before, chunks) == 8  # 7 tokens + the usage event
    tokens = 'gpuserve_gateway_tokens_total{kind="completion",model="sim-model"}'
    assert value(after, tokens) - value(before, tokens) == 7
    req = (
        'gpuserve_gateway_requests_total{key="alice",model="sim-model",'
        'route="/v1/completions",status="200"}'
    )
    assert value(after, req) - value(before, req) == 1
    for series in (
        "gpuserve_gateway_time_to_first_byte_seconds_bucket",
        "gpuserve_gateway_request_duration_seconds_bucket",
        "gpuserve_gateway_in_flight",
    ):
        assert series in after


def test_several_workers_share_metrics(workdir: Path, sim: Proc) -> None:
    gw = start_gateway(
        workdir,
        {"upstreams": [{"name": MODEL, "base_url": sim.url}], "listen": {"workers": 2}},
        ready_path="/ready",
    )
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        for _ in range(6):  # new connection each time: spread over both workers
            assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
        text = httpx.get(gw.url + "/metrics").text
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith(
                'gpuserve_gateway_requests_total{key="anonymous",model="sim-model",'
                'route="/v1/completions",status="200"}'
            )
        )
        assert float(line.rsplit(" ", 1)[1]) == 6  # summed over the workers' files
        assert "Started parent process" in gw.log()
    finally:
        gw.stop()
