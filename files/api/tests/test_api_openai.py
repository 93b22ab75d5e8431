"""The OpenAI SDK (sync, async, streaming) through the gateway to the simulator."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from api_env import ALIAS, KEY_ALICE, MODEL
from gpuserve_sim.procs import Proc


@pytest.fixture
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_ALICE, max_retries=0)


def test_completion_sync_returns_simulated_text_and_usage(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="one two three", max_tokens=5)
    assert resp.model == MODEL
    assert resp.choices[0].finish_reason == "length"
    assert len(resp.choices[0].text.split()) == 5
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 5)


def test_chat_sync_and_alias_routes_to_canonical_model(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi there"}], max_tokens=4
    )
    assert resp.model == MODEL  # the alias was rewritten to the upstream's name
    assert resp.choices[0].message.role == "assistant"
    assert len(resp.choices[0].message.content.split()) == 4


def test_output_is_deterministic_for_the_same_seed(client: openai.OpenAI) -> None:
    texts = {
        client.completions.create(model=MODEL, prompt="same", max_tokens=8, seed=3).choices[0].text
        for _ in range(2)
    }
    other = client.completions.create(model=MODEL, prompt="same", max_tokens=8, seed=4)
    assert len(texts) == 1
    assert other.choices[0].text not in texts


def test_streaming_chat_relays_every_chunk_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count"}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([t for t in content if t]) == 20
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20


def test_stream_arrives_incrementally_not_buffered(gateway: Proc, auth: dict) -> None:
    # 60 tokens at 2 ms each: the first event must arrive long before the last.
    body = {"model": MODEL, "prompt": "x", "max_tokens": 60, "stream": True, "ignore_eos": True}
    times = []
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", gateway.url + "/v1/completions", json=body, headers=auth) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                times.append(time.perf_counter())
    assert len(times) == 61  # 60 tokens + [DONE]
    assert times[-1] - times[0] > 0.05


@pytest.mark.asyncio
async def test_async_client_concurrent_completions(gateway: Proc) -> None:
    import asyncio

    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY_ALICE, max_retries=0)
    async with client:
        results = await asyncio.gather(
            *(
                client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)
                for i in range(8)
            )
        )
        stream = await client.completions.create(model=MODEL, prompt="s", max_tokens=5, stream=True)
        pieces = [c.choices[0].text async for c in stream]
    assert all(len(r.choices[0].text.split()) == 3 for r in results)
    assert len({r.id for r in results}) == 8
    assert len("".join(pieces).split()) == 5


def test_models_list_merges_upstreams_and_aliases(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {MODEL, ALIAS}
    assert models[MODEL].owned_by == "gpuserve-sim (simulator)"
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_request_id_is_forwarded_to_upstream_and_returned(gateway: Proc, auth: dict) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    r = httpx.post(
        gateway.url + "/v1/completions", json=body, headers={**auth, "X-Request-ID": "req-42"}
    )
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["id"] == "cmpl-req-42"  # the simulator used the forwarded id
    generated = httpx.post(gateway.url + "/v1/completions", json=body, headers=auth)
    rid = generated.headers["x-request-id"]
    assert len(rid) == 32
    assert generated.json()["id"] == f"cmpl-{rid}"


def test_other_v1_routes_pass_through(gateway: Proc, auth: dict) -> None:
    # vLLM serves more /v1 routes than the gateway knows; it relays them unchanged.
    r = httpx.post(
        gateway.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=auth
    )
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}  # the simulator's (vLLM's) own answer
    assert r.headers["x-request-id"]
