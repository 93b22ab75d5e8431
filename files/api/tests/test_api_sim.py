"""The simulator itself: vLLM's shapes, loading, queueing, limits, metrics."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from gpuserve_sim.procs import Proc, start_sim, wait_ready


def _metrics(url: str) -> dict[str, float]:
    return _parse(httpx.get(url + "/metrics").text)


def _parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(vllm:\w+|gpuserve_sim_info)(?:\{[^}]*\})? (\S+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def test_sim_says_it_is_a_simulator(sim: Proc) -> None:
    health = httpx.get(sim.url + "/health")
    assert health.json()["simulator"] == "gpuserve-sim"
    assert health.headers["x-simulator"] == "gpuserve-sim"
    card = httpx.get(sim.url + "/v1/models").json()["data"][0]
    assert card["owned_by"] == "gpuserve-sim (simulator)"
    assert "SIMULATED vLLM server" in sim.log()
    assert _metrics(sim.url)["gpuserve_sim_info"] == 1


def test_sim_exposes_vllm_metric_names(sim: Proc) -> None:
    httpx.post(sim.url + "/v1/completions", json={"prompt": "a b c", "max_tokens": 2})
    names = set(_metrics(sim.url))
    for name in (
        "num_requests_running",
        "num_requests_waiting",
        "kv_cache_usage_perc",
        "prompt_tokens_total",
        "generation_tokens_total",
        "time_to_first_token_seconds_count",
        "inter_token_latency_seconds_count",
        "e2e_request_latency_seconds_count",
        "request_queue_time_seconds_count",
    ):
        assert f"vllm:{name}" in names, name
    assert _metrics(sim.url)["vllm:prompt_tokens_total"] >= 3


def test_sim_error_shapes_match_vllm(sim: Proc) -> None:
    r = httpx.post(sim.url + "/v1/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `other` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "x " * 500, "max_tokens": 20})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        "This model's maximum context length is 512 tokens. However, you requested 520 tokens"
    )
    r = httpx.post(sim.url + "/v1/chat/completions", content=b"{")
    assert (r.status_code, r.json()["error"]["type"]) == (400, "BadRequestError")


def test_sim_stream_framing_and_usage(sim: Proc) -> None:
    body = {
        "prompt": "a b",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raw = httpx.post(sim.url + "/v1/completions", json=body).text
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [p["choices"][0]["finish_reason"] for p in payloads[:3]] == [None, None, "length"]
    assert payloads[3]["choices"] == []
    assert payloads[3]["usage"] == {"prompt_tokens": 2, "total_tokens": 5, "completion_tokens": 3}


def test_sim_honours_ignore_eos_and_n(sim: Proc) -> None:
    natural = httpx.post(
        sim.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}
    ).json()
    assert natural["choices"][0]["finish_reason"] == "stop"
    forced = httpx.post(
        sim.url + "/v1/completions",
        json={"prompt": "q", "max_tokens": 100, "ignore_eos": True, "n": 2},
    ).json()
    assert [c["finish_reason"] for c in forced["choices"]] == ["length", "length"]
    assert forced["usage"]["completion_tokens"] == 200


def test_sim_loading_period_then_healthy(workdir: Path) -> None:
    proc = start_sim(workdir, wait=False, startup_seconds=1.5)
    try:
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(proc.url + "/health").status_code
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert status == 503
        r = httpx.post(proc.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503
        wait_ready(proc.url, proc, timeout=5)
        assert httpx.get(proc.url + "/health").json()["status"] == "ok"
    finally:
        proc.stop()


@pytest.mark.asyncio
async def test_sim_queues_beyond_max_num_seqs(workdir: Path) -> None:
    proc = start_sim(workdir, max_num_seqs=2, ttft_ms=200, itl_ms=10)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"prompt": "x", "max_tokens": 5, "ignore_eos": True}
            tasks = [
                asyncio.ensure_future(client.post(proc.url + "/v1/completions", json=body))
                for _ in range(5)
            ]
            mid: dict[str, float] = {}
            for _ in range(100):  # while the first two are before their first token
                await asyncio.sleep(0.01)
                async_metrics = await client.get(proc.url + "/metrics")
                mid = {k: v for k, v in _parse(async_metrics.text).items()}
                if mid.get("vllm:num_requests_waiting") == 3:
                    break
            results = await asyncio.gather(*tasks)
        assert (mid["vllm:num_requests_running"], mid["vllm:num_requests_waiting"]) == (2, 3)
        assert all(r.status_code == 200 for r in results)
        end = _metrics(proc.url)
        assert (end["vllm:num_requests_running"], end["vllm:num_requests_waiting"]) == (0, 0)
    finally:
        proc.stop()


def test_sim_reads_settings_from_env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSERVE_SIM_MODEL", "env-model")
    monkeypatch.setenv("GPUSERVE_SIM_MAX_MODEL_LEN", "64")
    proc = start_sim(workdir)
    try:
        card = httpx.get(proc.url + "/v1/models").json()["data"][0]
        assert (card["id"], card["max_model_len"]) == ("env-model", 64)
    finally:
        proc.stop()


def test_sim_continuous_usage_stats(sim: Proc) -> None:
    body = {
        "prompt": "a b",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    events = [
        json.loads(e[6:])
        for e in httpx.post(sim.url + "/v1/completions", json=body).text.split("\n\n")
        if e.startswith("data: {")
    ]
    assert [e["usage"]["completion_tokens"] for e in events] == [1, 2, 3, 3]


def test_sim_ignores_non_string_stop_entries(sim: Proc) -> None:
    r = httpx.post(
        sim.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2, "stop": [{"x": 1}, 3]}
    )
    assert r.status_code == 200


def _families(text: str) -> set[tuple[str, str]]:
    return {
        (parts[2], parts[3])
        for parts in (line.split() for line in text.splitlines() if line.startswith("# TYPE vllm:"))
    }


def test_sim_metric_families_match_real_vllm(sim: Proc) -> None:
    # Captured from vLLM 0.24.0 on a GPU: every vllm:* family the simulator exports must
    # exist in real vLLM with the same type, so dashboards and alerts built on CI hold.
    real_file = Path(__file__).parent / "data" / "vllm-0.24.0-metric-families.txt"
    real = {
        (name, kind)
        for name, kind in (
            line.split() for line in real_file.read_text().splitlines() if not line.startswith("#")
        )
    }
    httpx.post(sim.url + "/v1/completions", json={"prompt": "a b c", "max_tokens": 2})
    ours = {
        f for f in _families(httpx.get(sim.url + "/metrics").text) if not f[0].endswith("_created")
    }
    assert ours, "the simulator exports no vllm:* families"
    assert ours <= real, f"not in real vLLM 0.24.0: {sorted(ours - real)}"
    for needed in (
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:time_to_first_token_seconds", "histogram"),
        ("vllm:e2e_request_latency_seconds", "histogram"),
        ("vllm:generation_tokens_total", "counter"),
    ):
        assert needed in ours


def test_sim_accepts_token_id_prompts_like_vllm(sim: Proc) -> None:
    r = httpx.post(
        sim.url + "/v1/completions",
        json={"prompt": [101, 2009, 2003, 1037], "max_tokens": 3, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 4
    assert r.json()["usage"]["completion_tokens"] == 3
    bad = httpx.post(sim.url + "/v1/completions", json={"prompt": [1, "x"], "max_tokens": 3})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "prompt"
