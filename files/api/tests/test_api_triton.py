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


# --- KServe v2 infer through tritonclient.http (binary tensor extension by default) ---
def _infer_inputs(prompt: str, **flags: object) -> list:
    """The vLLM backend's input tensors, as its README's client builds them."""
    import numpy as np

    text = triton_http.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs = [text]
    for name, value in flags.items():
        if name == "sampling_parameters":
            t = triton_http.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([json.dumps(value).encode()], dtype=np.object_))
        else:
            t = triton_http.InferInput(name, [1], "BOOL")
            t.set_data_from_numpy(np.array([value], dtype=bool))
        inputs.append(t)
    return inputs


def test_tritonclient_http_infer_binary(tc: triton_http.InferenceServerClient) -> None:
    result = tc.infer(
        MODEL,
        _infer_inputs(
            "alpha beta",
            sampling_parameters={"max_tokens": "4", "temperature": "0.5"},  # strings, converted
            exclude_input_in_output=True,
            return_num_output_tokens=True,
        ),
        request_id="req-17",
        headers=dict(AUTH),  # tritonclient adds Inference-Header-Content-Length to it
    )
    response = result.get_response()
    assert response["id"] == "req-17"
    assert (response["model_name"], response["model_version"]) == (MODEL, "1")
    # No outputs named: tritonclient asks binary_data_output, so they came as binary.
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    text = result.as_numpy("text_output")[0].decode()
    assert len(text.split()) == 4
    assert not text.startswith("alpha")
    assert result.as_numpy("num_output_tokens").tolist() == [4]


def test_tritonclient_http_infer_json_outputs_and_prompt_prepended(
    tc: triton_http.InferenceServerClient,
) -> None:
    out = triton_http.InferRequestedOutput("text_output", binary_data=False)
    inputs = _infer_inputs("alpha beta", return_finish_reason=True)
    for t in inputs:  # the JSON form this time
        t.set_data_from_numpy(_np_of(t), binary_data=False)
    result = tc.infer(
        MODEL, inputs, outputs=[out], parameters={"max_tokens": 3}, headers=dict(AUTH)
    )
    response = result.get_response()
    # Only the requested output, as JSON data.
    assert [o["name"] for o in response["outputs"]] == ["text_output"]
    assert "data" in response["outputs"][0]
    text = response["outputs"][0]["data"][0]
    assert text.startswith("alpha beta ")
    assert len(text.split()) == 2 + 3


def _np_of(tensor: triton_http.InferInput):
    import numpy as np

    raw = tensor._get_binary_data()
    if tensor.datatype() == "BOOL":
        return np.array([raw != b"\x00"], dtype=bool)
    from tritonclient.utils import deserialize_bytes_tensor

    return np.array(deserialize_bytes_tensor(raw), dtype=np.object_)


def test_infer_json_body_by_hand(gateway: Proc) -> None:
    body = {
        "id": "abc",
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [["hi there"]]},
            {"name": "stream", "datatype": "BOOL", "shape": [1], "data": [False]},
            {
                "name": "sampling_parameters",
                "datatype": "BYTES",
                "shape": [1],
                "data": [json.dumps({"max_tokens": 2, "seed": None})],
            },
        ],
    }
    r = httpx.post(
        gateway.url + f"/v2/models/{ALIAS}/versions/1/infer", json=body, headers=AUTH, timeout=10
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "abc"
    assert out["outputs"][0]["name"] == "text_output"
    assert len(out["outputs"][0]["data"][0].split()) == 2 + 2


def _text(prompt: str = "x") -> dict:
    return {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [prompt]}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {
                "inputs": [
                    _text(),
                    {"name": "bogus", "datatype": "BOOL", "shape": [1], "data": [True]},
                ]
            },
            400,
            "`bogus`",
        ),
        ({"inputs": [_text()], "parameters": {"max_tokens": "lots"}}, 400, "`max_tokens`"),
        ({"inputs": [_text()], "parameters": {"temperture": 1}}, 400, "`temperture`"),
        (
            {
                "inputs": [
                    _text(),
                    {"name": "stream", "datatype": "BOOL", "shape": [1], "data": [True]},
                ]
            },
            400,
            "ModelStreamInfer",
        ),
        ({"inputs": [_text()], "parameters": {"max_tokens": 10**6}}, 400, "limits.max_tokens"),
        ({"inputs": [_text()], "outputs": [{"name": "logits"}]}, 400, "`logits`"),
        (
            {"inputs": [{"name": "stream", "datatype": "BOOL", "shape": [1], "data": [False]}]},
            400,
            "`text_input`",
        ),
    ],
)
def test_infer_errors_name_what_the_client_sent(
    gateway: Proc, body: dict, status: int, needle: str
) -> None:
    r = httpx.post(gateway.url + f"/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=10)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert needle in r.json()["error"]


def test_infer_needs_a_key(gateway: Proc) -> None:
    r = httpx.post(gateway.url + f"/v2/models/{MODEL}/infer", json={"inputs": [_text()]})
    assert r.status_code == 401


def test_generate_null_flags_mean_default(gateway: Proc) -> None:
    r = _generate(
        gateway,
        {
            "text_input": "alpha",
            "max_tokens": 2,
            "exclude_input_in_output": None,
            "return_finish_reason": None,
            "stream": None,
            "temperature": None,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["text_output"].startswith("alpha ")  # default: input prepended
    assert "finish_reason" not in r.json()


@pytest.mark.parametrize(
    "name", ["exclude_input_in_output", "return_finish_reason", "return_num_output_tokens"]
)
def test_generate_flag_errors_name_the_flag(gateway: Proc, name: str) -> None:
    r = _generate(gateway, {"text_input": "x", "max_tokens": 1, name: "maybe"})
    assert r.status_code == 400
    assert f"`{name}`" in r.json()["error"]


def test_generate_string_sampling_values_are_converted(gateway: Proc) -> None:
    r = _generate(gateway, {"text_input": "x", "parameters": {"max_tokens": "3", "top_p": "0.9"}})
    assert r.status_code == 200, r.text
    assert len(r.json()["text_output"].split()) == 1 + 3


def test_tritonclient_http_model_config(tc: triton_http.InferenceServerClient) -> None:
    config = tc.get_model_config(MODEL, headers=AUTH)
    # What Triton's vLLM backend auto-completes (vllm_backend src/model.py).
    assert config["backend"] == "vllm"
    assert config["max_batch_size"] == 0
    assert config["model_transaction_policy"] == {"decoupled": True}
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["text_input"]["data_type"] == "TYPE_STRING"
    assert inputs["text_input"]["optional"] is False
    assert inputs["stream"] == {
        "name": "stream",
        "data_type": "TYPE_BOOL",
        "format": "FORMAT_NONE",
        "dims": [1],
        "optional": True,
    }
    assert config["output"][0]["name"] == "text_output"
    assert tc.get_model_config(MODEL, model_version="1", headers=AUTH)["name"] == MODEL
    with pytest.raises(InferenceServerException, match="unknown model"):
        tc.get_model_config("no-such-model", headers=AUTH)


def test_tritonclient_http_repository_index(tc: triton_http.InferenceServerClient) -> None:
    index = tc.get_model_repository_index(headers=AUTH)
    assert index == [{"name": MODEL, "version": "1", "state": "READY"}]


def _binary_infer(gateway: Proc, header: dict, blob: bytes, length: int | None = None):
    head = json.dumps(header).encode()
    return httpx.post(
        gateway.url + f"/v2/models/{MODEL}/infer",
        content=head + blob,
        headers={**AUTH, "Inference-Header-Content-Length": str(length or len(head))},
        timeout=10,
    )


def test_infer_binary_body_by_hand(gateway: Proc) -> None:
    # Binary tensor data extension: BYTES = 4-byte little-endian length + bytes.
    prompt = b"hi there"
    blob = len(prompt).to_bytes(4, "little") + prompt + b"\x01"  # + BOOL true (1 byte)
    header = {
        "inputs": [
            {
                "name": "text_input",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 4 + len(prompt)},
            },
            {
                "name": "exclude_input_in_output",
                "datatype": "BOOL",
                "shape": [1],
                "parameters": {"binary_data_size": 1},
            },
        ],
        "parameters": {"max_tokens": 2},
        "outputs": [{"name": "text_output", "parameters": {"binary_data": True}}],
    }
    r = _binary_infer(gateway, header, blob)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == len(r.content) - n
    out = r.content[n:]
    size = int.from_bytes(out[:4], "little")
    assert len(out[4 : 4 + size].decode().split()) == 2  # input excluded: 2 tokens


@pytest.mark.parametrize(
    ("size", "blob", "length", "needle"),
    [
        (20, b"\x05\x00\x00\x00abc", None, "past the end"),
        (7, b"\x05\x00\x00\x00abc", None, "truncated BYTES element"),
        (7, b"\x03\x00\x00\x00abc", 10**6, "Inference-Header-Content-Length"),
    ],
)
def test_infer_bad_binary_is_a_400(
    gateway: Proc, size: int, blob: bytes, length: int | None, needle: str
) -> None:
    header = {
        "inputs": [
            {
                "name": "text_input",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    r = _binary_infer(gateway, header, blob, length)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_infer_deeply_nested_data_is_a_400(gateway: Proc) -> None:
    data: list = ["x"]
    for _ in range(40):
        data = [data]
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": data}]}
    r = httpx.post(gateway.url + f"/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 400
    assert "`text_input`" in r.json()["error"]
