"""Triton clients: tritonclient[http] health/metadata and the generate endpoints."""

from __future__ import annotations

import json

import httpx
import pytest
import tritonclient.http as triton_http
from api_env import ALIAS, KEY_ALICE, MODEL
from gpuserve_sim.procs import Proc, start_gateway
from tritonclient.utils import InferenceServerException

AUTH = {"Authorization": f"Bearer {KEY_ALICE}"}


@pytest.fixture
def tc(gateway: Proc) -> triton_http.InferenceServerClient:
    client = triton_http.InferenceServerClient(gateway.url.removeprefix("http://"))
    yield client
    client.close()


def test_tritonclient_health_and_model_readiness(tc: triton_http.InferenceServerClient) -> None:
    assert tc.is_server_live() is True
    assert tc.is_server_ready() is True
    assert tc.is_model_ready(MODEL) is True
    assert tc.is_model_ready(MODEL, model_version="1") is True
    assert tc.is_model_ready(ALIAS) is True
    assert tc.is_model_ready("no-such-model") is False
    assert tc.is_model_ready(MODEL, model_version="2") is False


def test_tritonclient_metadata(tc: triton_http.InferenceServerClient) -> None:
    server = tc.get_server_metadata(headers=AUTH)
    assert server["name"] == "gpuserve-gateway"
    assert "generate" in server["extensions"]
    meta = tc.get_model_metadata(MODEL, headers=AUTH)
    assert meta["versions"] == ["1"]
    assert {i["name"] for i in meta["inputs"]} >= {"text_input", "sampling_parameters"}
    with pytest.raises(InferenceServerException, match="unknown model"):
        tc.get_model_metadata("no-such-model", headers=AUTH)


def test_health_is_status_code_only_and_open(gateway: Proc) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        r = httpx.get(gateway.url + path)
        assert (r.status_code, r.content) == (200, b"")
    assert httpx.get(gateway.url + "/v2/models/nope/ready").status_code == 404


def _generate(gateway: Proc, body: dict, path: str = f"/v2/models/{MODEL}/generate"):
    return httpx.post(gateway.url + path, json=body, headers=AUTH, timeout=10)


def test_generate_prepends_prompt_and_returns_extra_outputs(gateway: Proc) -> None:
    r = _generate(
        gateway,
        {
            "text_input": "alpha beta",
            "parameters": {
                "max_tokens": 6,
                "temperature": 0.5,
                "top_k": 5,
                "top_p": 0.9,
                "seed": 1,
            },
            "return_finish_reason": True,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL
    assert out["model_version"] == "1"
    assert out["text_output"].startswith("alpha beta ")  # Triton's default: input included
    assert len(out["text_output"].split()) == 2 + 6
    assert (out["finish_reason"], out["num_input_tokens"], out["num_output_tokens"]) == (
        "length",
        2,
        6,
    )


def test_generate_exclude_input_and_sampling_parameters_string(gateway: Proc) -> None:
    r = _generate(
        gateway,
        {
            "text_input": "alpha beta",
            "sampling_parameters": json.dumps({"max_tokens": 3}),
            "exclude_input_in_output": True,
        },
        path=f"/v2/models/{MODEL}/versions/1/generate",
    )
    assert r.status_code == 200, r.text
    text = r.json()["text_output"]
    assert not text.startswith("alpha")
    assert len(text.split()) == 3
    assert "finish_reason" not in r.json()


def test_generate_stream_sends_triton_events(gateway: Proc) -> None:
    body = {
        "text_input": "hello",
        "max_tokens": 5,
        "return_num_output_tokens": True,
        "return_finish_reason": True,
    }
    with httpx.stream(
        "POST",
        gateway.url + f"/v2/models/{MODEL}/generate_stream",
        json=body,
        headers=AUTH,
        timeout=10,
    ) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) == 5
    assert all(e["model_name"] == MODEL and e["num_output_tokens"] == 1 for e in events)
    assert [e["finish_reason"] for e in events][-1] == "length"
    assert len("".join(e["text_output"] for e in events).split()) == 5


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        (f"/v2/models/{MODEL}/generate", {"parameters": {}}, 400, "text_input"),
        (f"/v2/models/{MODEL}/generate", {"text_input": "x", "bogus": 1}, 400, "bogus"),
        (
            f"/v2/models/{MODEL}/generate",
            {"text_input": "x", "max_tokens": 10**6},
            400,
            "limits.max_tokens",
        ),
        ("/v2/models/nope/generate", {"text_input": "x"}, 404, "unknown model"),
        (f"/v2/models/{MODEL}/versions/9/generate", {"text_input": "x"}, 404, "version"),
    ],
)
def test_generate_errors_use_triton_shape(
    gateway: Proc, path: str, body: dict, status: int, needle: str
) -> None:
    r = _generate(gateway, body, path=path)
    assert r.status_code == status
    assert set(r.json()) == {"error"}
    assert isinstance(r.json()["error"], str)
    assert needle in r.json()["error"]


def test_generate_upstream_rejection_is_relayed(gateway: Proc) -> None:
    # The simulator rejects prompt + max_tokens over its max_model_len (512) like vLLM.
    r = _generate(gateway, {"text_input": "word " * 300, "max_tokens": 250})
    assert r.status_code == 400
    assert "maximum context length is 512" in r.json()["error"]


def test_triton_not_ready_when_upstream_down(workdir) -> None:
    from gpuserve_sim.procs import free_port

    gw = start_gateway(
        workdir, {"upstreams": [{"name": "down", "base_url": f"http://127.0.0.1:{free_port()}"}]}
    )
    try:
        tc = triton_http.InferenceServerClient(gw.url.removeprefix("http://"))
        assert tc.is_server_live() is True
        assert tc.is_server_ready() is False
        assert tc.is_model_ready("down") is False
        tc.close()
    finally:
        gw.stop()
