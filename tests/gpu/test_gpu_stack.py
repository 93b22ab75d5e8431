"""Client-level checks through the gateway against real vLLM on a GPU (the CI checks, for real)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from gpu_settings import KEY, SERVED

pytestmark = pytest.mark.gpu

AUTH = {"Authorization": f"Bearer {KEY}"}


def running_requests(vllm_url: str) -> float:
    """Sum of vllm:num_requests_running over its label sets, from vLLM's own /metrics."""
    text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:num_requests_running")
    )


def test_openai_sdk_completion_returns_exact_token_count(gateway_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=KEY)
    out = client.completions.create(
        model=SERVED,
        prompt="The capital of France is",
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.model == SERVED
    assert out.usage is not None
    assert out.usage.completion_tokens == 16
    assert out.choices[0].text


def test_openai_sdk_streaming_completion_and_chat(gateway_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=KEY)
    stream = client.completions.create(
        model=SERVED,
        prompt="Once upon a time",
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) >= 2, "streamed in several chunks"
    usage = [c.usage for c in chunks if c.usage]
    assert usage
    assert usage[-1].completion_tokens == 24

    chat = client.chat.completions.create(
        model="microsoft/phi-2",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=8,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    deltas = [c.choices[0].delta.content for c in chat if c.choices and c.choices[0].delta.content]
    assert deltas


def test_openai_sdk_async_client(gateway_url: str) -> None:
    from openai import AsyncOpenAI

    async def three_at_once() -> list:
        client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=KEY)
        try:
            return await asyncio.gather(
                *[
                    client.completions.create(model=SERVED, prompt=f"n={i}", max_tokens=4)
                    for i in range(3)
                ]
            )
        finally:
            await client.close()

    outs = asyncio.run(three_at_once())
    assert len(outs) == 3
    assert all(o.choices[0].text is not None for o in outs)


def test_triton_generate_and_generate_stream(gateway_url: str) -> None:
    body = {
        "text_input": "Hello",
        "parameters": {"max_tokens": 12, "temperature": 0},
        "return_num_output_tokens": True,
        "exclude_input_in_output": True,
    }
    r = httpx.post(
        f"{gateway_url}/v2/models/{SERVED}/generate", json=body, headers=AUTH, timeout=60
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == SERVED
    assert isinstance(out["text_output"], str)
    assert out["num_output_tokens"] <= 12

    events = []
    with httpx.stream(
        "POST",
        f"{gateway_url}/v2/models/{SERVED}/generate_stream",
        json=body,
        headers=AUTH,
        timeout=60,
    ) as resp:
        assert resp.status_code == 200
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    assert len(events) >= 2
    assert all(e["model_name"] == SERVED for e in events)


def test_kserve_health_semantics(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{gateway_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{gateway_url}/v2/models/{SERVED}/ready").status_code == 200
    assert httpx.get(f"{gateway_url}/v2/models/no-such-model/ready").status_code in (400, 404)


def test_client_disconnect_aborts_the_request_in_vllm(gateway_url: str, vllm_url: str) -> None:
    body = {
        "model": SERVED,
        "prompt": "Count:",
        "max_tokens": 1800,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"{gateway_url}/v1/completions", json=body, headers=AUTH, timeout=60
    ) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for _ in range(5):
            next(lines)
        assert running_requests(vllm_url) >= 1, "the request runs in vLLM while streaming"
    # Leaving the block closed the client connection mid-stream.
    deadline = time.monotonic() + 10
    while running_requests(vllm_url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_requests(vllm_url) == 0, "vLLM still runs the abandoned request"


def test_overload_answers_429_with_retry_after(gateway_url: str) -> None:
    body = {"model": SERVED, "prompt": "x", "max_tokens": 400, "ignore_eos": True}

    async def ten_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *[
                    client.post(f"{gateway_url}/v1/completions", json=body, headers=AUTH)
                    for _ in range(10)
                ]
            )

    results = asyncio.run(ten_at_once())
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 4
    assert 429 in codes
    limited = next(r for r in results if r.status_code == 429)
    assert limited.headers.get("retry-after")
    assert limited.json()["error"]


def test_metrics_present_in_gateway_and_vllm(gateway_url: str, vllm_url: str) -> None:
    engine = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:time_to_first_token_seconds",
        "vllm:generation_tokens_total",
        "vllm:e2e_request_latency_seconds",
    ):
        assert name in engine, f"{name} missing from vLLM's /metrics"
    gateway = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    assert "gpuserve_gateway_requests_total" in gateway
