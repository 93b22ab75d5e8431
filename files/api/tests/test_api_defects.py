"""Issue 14's defect classes, each tested for the class: caps on absent fields and on all
prompt text, no 5xx from any client input, connection reuse after upstream errors,
protocol hygiene without nginx."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_env import KEY_ALICE, MODEL
from gpuserve_sim.procs import Proc, free_port, start_gateway
from upstreams import RecordingUpstream, error_closing_app, serve

AUTH = {"Authorization": f"Bearer {KEY_ALICE}"}
CAP = 50
SHORT = "short-context"  # a model whose whole context (40 tokens) is under the cap


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[RecordingUpstream, str]]:
    rec = RecordingUpstream({MODEL: 1000, SHORT: 40})
    with serve(rec.app) as url:
        yield rec, url


@pytest.fixture(scope="module")
def rec_gateway(
    workdir: Path, keys_file: Path, recorder: tuple[RecordingUpstream, str]
) -> Iterator[Proc]:
    _, url = recorder
    gw = start_gateway(
        workdir,
        {
            "upstreams": [{"name": MODEL, "base_url": url}, {"name": SHORT, "base_url": url}],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": {"max_tokens": CAP, "max_n": 2, "max_prompt_chars": 100},
        },
    )
    yield gw
    gw.stop()


def _post(gw: Proc, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers=AUTH, timeout=10, **kw)


# --- 1. caps apply to the value vLLM uses, and to all prompt text ---------------------
@pytest.mark.parametrize(
    ("path", "body", "field", "want"),
    [
        # vLLM's CompletionRequest.max_tokens defaults to 16 (OpenAI's default too).
        ("/v1/completions", {"prompt": "x"}, "max_tokens", 16),
        ("/v1/completions", {"prompt": "x", "max_tokens": None}, "max_tokens", 16),
        # Chat and Responses: vLLM's default is the rest of the context (1000 here).
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
         "max_completion_tokens", CAP),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "max_tokens": None,
          "max_completion_tokens": None}, "max_completion_tokens", CAP),
        ("/v1/responses", {"input": "x"}, "max_output_tokens", CAP),
        ("/v1/responses", {"input": "x", "max_output_tokens": None}, "max_output_tokens", CAP),
    ],
)  # fmt: skip
def test_absent_length_field_gets_the_capped_effective_value(
    rec_gateway: Proc,
    recorder: tuple[RecordingUpstream, str],
    path: str,
    body: dict,
    field: str,
    want: int,
) -> None:
    rec, _ = recorder
    r = _post(rec_gateway, path, {"model": MODEL, **body})
    assert r.status_code == 200, r.text
    got_path, sent = rec.last()
    assert got_path == path
    assert sent[field] == want


def test_triton_generate_absent_max_tokens_is_capped(
    rec_gateway: Proc, recorder: tuple[RecordingUpstream, str]
) -> None:
    rec, _ = recorder
    for body in ({"text_input": "x"}, {"text_input": "x", "max_tokens": None}):
        r = _post(rec_gateway, f"/v2/models/{MODEL}/generate", body)
        assert r.status_code == 200, r.text
        assert rec.last()[1]["max_tokens"] == 16  # SamplingParams' default, under the cap


def test_no_length_added_when_the_context_is_under_the_cap(
    rec_gateway: Proc, recorder: tuple[RecordingUpstream, str]
) -> None:
    rec, _ = recorder
    r = _post(rec_gateway, "/v1/chat/completions", {"model": SHORT, "messages": [
        {"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 200, r.text
    sent = rec.last()[1]
    assert "max_completion_tokens" not in sent
    assert "max_tokens" not in sent


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", {"input": "x", "max_output_tokens": CAP + 1}, "max_output_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                  "max_completion_tokens": CAP + 1}, "max_completion_tokens"),
    ],
)  # fmt: skip
def test_explicit_length_over_cap_is_refused_on_every_route(
    rec_gateway: Proc, path: str, body: dict, param: str
) -> None:
    r = _post(rec_gateway, path, {"model": MODEL, **body})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == "max_tokens_over_limit"


LONG = "w" * 101  # over limits.max_prompt_chars = 100 on its own


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "name": LONG}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [
            {"type": "function", "function": {"name": "f", "description": LONG}}]}),
        ("/v1/chat/completions", {"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": "' + LONG + '"}'}}]}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x" * 60}, {"type": "text", "text": "y" * 60}]}]}),
        ("/v1/responses", {"input": [{"role": "user", "content": [
            {"type": "input_text", "text": LONG}]}]}),
        ("/v1/responses", {"input": "x", "instructions": LONG}),
    ],
)  # fmt: skip
def test_prompt_cap_counts_all_text_that_reaches_the_model(
    rec_gateway: Proc, path: str, body: dict
) -> None:
    r = _post(rec_gateway, path, {"model": MODEL, **body})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "prompt_over_limit"


# --- 2. no 5xx and no traceback from client input ---------------------------------------
# Deeper than Python's recursion limit, under the gateway's limits.max_body_bytes.
DEEP = b"[" * 15_000 + b"]" * 15_000
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/responses",
          f"/v2/models/{MODEL}/generate")  # fmt: skip


def _error_shape(path: str, r: httpx.Response) -> str:
    assert 400 <= r.status_code < 500, f"{path}: {r.status_code} {r.text[:300]}"
    body = r.json()
    if path.startswith("/v2"):
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        return body["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["message"])


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"model": "sim-model", "prompt": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}",
        b'{"model": "\\ud800", "prompt": "x", "text_input": "x"}',
        b'{"model": "sim-model", "prompt": "\\udfff", "text_input": "\\udfff",'
        b' "messages": [{"role": "user", "content": "\\ud800"}], "input": "\\ud800"}',
        b'{"model": "sim-model", "prompt": "x", "text_input": "x", "\\ud800": 1}',
        b'{"model": "sim-model", "prompt": "x", "text_input": "x", "temperature": NaN}',
        b'{"model": "sim-model", "prompt": "x", "text_input": "x", "top_p": Infinity}',
        b'{"model": "sim-model", "prompt": "\xff\xfe", "text_input": "\xff"}',
    ],
    ids=["deep-array", "deep-object", "surrogate-model", "surrogate-text", "surrogate-key",
         "nan", "infinity", "invalid-utf8"],
)  # fmt: skip
def test_hostile_json_is_a_4xx_in_the_route_shape_without_traceback(
    gateway: Proc, path: str, raw: bytes
) -> None:
    r = httpx.post(
        gateway.url + path, content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    _error_shape(path, r)
    assert "Traceback" not in gateway.log()


def test_triton_sampling_parameters_string_is_strict_json(gateway: Proc) -> None:
    for sp in ('{"temperature": NaN}', "[" * 10_000 + "]" * 10_000):
        r = _post(gateway, f"/v2/models/{MODEL}/generate", {"text_input": "x",
                  "sampling_parameters": sp})  # fmt: skip
        assert "sampling_parameters" in _error_shape("/v2", r)
    assert "Traceback" not in gateway.log()


def test_valid_surrogate_pairs_still_pass(gateway: Proc) -> None:
    # Python's json.dumps (ensure_ascii) writes an emoji as a \\ud83d\\ude00 pair.
    r = httpx.post(
        gateway.url + "/v1/completions",
        content=b'{"model": "sim-model", "prompt": "\\ud83d\\ude00", "max_tokens": 2}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


# --- 3. a pooled connection the upstream closed after an error is never used -------------
def test_upstream_closing_after_errors_never_fails_other_requests(workdir: Path) -> None:
    with serve(error_closing_app()) as url:
        gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "base_url": url}]})
        try:
            ok_body = {"model": MODEL, "prompt": "fine", "max_tokens": 1}
            boom = {"model": MODEL, "prompt": "boom", "max_tokens": 1}
            statuses: list[tuple[str, int]] = []

            def one(kind: str) -> tuple[str, int]:
                body = boom if kind == "boom" else ok_body
                with httpx.Client(timeout=10) as c:
                    return kind, c.post(gw.url + "/v1/completions", json=body).status_code

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                for _ in range(6):
                    statuses += pool.map(one, ["boom", "ok"] * 8)
            with httpx.Client(timeout=10) as c:  # strictly after each error, one client
                for _ in range(40):
                    statuses.append(("boom", c.post(gw.url + "/v1/completions", json=boom)
                                     .status_code))  # fmt: skip
                    statuses.append(("ok", c.post(gw.url + "/v1/completions", json=ok_body)
                                     .status_code))  # fmt: skip
            assert {s for k, s in statuses if k == "boom"} == {500}
            assert {s for k, s in statuses if k == "ok"} == {200}, statuses
        finally:
            gw.stop()


# --- 4. protocol hygiene without nginx ---------------------------------------------------
def test_header_count_and_size_limits_answer_431(gateway: Proc) -> None:
    many = [(f"x-h{i}", "v") for i in range(120)]
    r = httpx.get(gateway.url + "/v1/models", headers=[*AUTH.items(), *many])
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "headers_over_limit"
    r = httpx.get(gateway.url + f"/v2/models/{MODEL}", headers={**AUTH, "x-big": "b" * 40_000})
    assert r.status_code == 431
    assert "limits.max_header_bytes" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/completions", "POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", f"/v1/models/{MODEL}", "GET"),
        ("DELETE", f"/v2/models/{MODEL}/generate", "POST"),
        ("POST", "/health", "GET"),
    ],
)
def test_wrong_method_on_a_known_route_is_405_with_allow(
    gateway: Proc, method: str, path: str, allow: str
) -> None:
    r = httpx.request(method, gateway.url + path, headers=AUTH)
    assert r.status_code == 405, r.text
    allowed = set(r.headers["allow"].split(", "))
    assert set(allow.split(", ")) <= allowed
    assert method not in allowed


def test_model_card_is_503_while_its_upstream_is_down(workdir: Path, sim: Proc) -> None:
    gw = start_gateway(
        workdir,
        {
            "upstreams": [
                {"name": MODEL, "base_url": sim.url},
                {"name": "down-model", "base_url": f"http://127.0.0.1:{free_port()}"},
            ]
        },
    )
    try:
        assert httpx.get(gw.url + f"/v1/models/{MODEL}").status_code == 200
        r = httpx.get(gw.url + "/v1/models/down-model")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert httpx.get(gw.url + "/v1/models/never-configured").status_code == 404
    finally:
        gw.stop()
