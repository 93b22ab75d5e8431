"""Validation, auth, overload, upstream failures and client disconnects."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from api_env import KEY_ALICE, KEY_BOB, MODEL
from gpuserve_sim.procs import Proc, free_port, start_gateway, start_sim

AUTH = {"Authorization": f"Bearer {KEY_ALICE}"}


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _wait_metric(url: str, name: str, want: float, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    value = _metric(url, name)
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = _metric(url, name)
    return value


# --- validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_json", "JSON object"),
        (b'{"prompt": "x"}', 400, "missing_model", "`model` is required"),
        (b'{"model": "nope", "prompt": "x"}', 404, "model_not_found", "nope"),
        (
            b'{"model": "sim-model", "prompt": "x", "max_tokens": 257}',
            400,
            "max_tokens_over_limit",
            "limits.max_tokens = 256",
        ),
        (
            b'{"model": "sim-model", "prompt": "x", "max_tokens": "9"}',
            400,
            "invalid_type",
            "max_tokens",
        ),
        (b'{"model": "sim-model", "prompt": "x", "n": 5}', 400, "n_over_limit", "limits.max_n = 4"),
        (
            b'{"model": "sim-model", "prompt": "' + b"y" * 2001 + b'"}',
            413,
            "prompt_over_limit",
            "limits.max_prompt_chars = 2000",
        ),
    ],
)
def test_validation_errors_use_openai_shape(
    gateway: Proc, body: bytes, status: int, code: str, needle: str
) -> None:
    r = httpx.post(
        gateway.url + "/v1/completions",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert needle in err["message"]
    assert "Traceback" not in r.text


def test_chat_prompt_cap_counts_all_messages(gateway: Proc) -> None:
    msgs = [{"role": "user", "content": "z" * 1000} for _ in range(3)]
    r = httpx.post(
        gateway.url + "/v1/chat/completions", headers=AUTH, json={"model": MODEL, "messages": msgs}
    )
    assert r.status_code == 413
    assert "limits.max_prompt_chars" in r.json()["error"]["message"]


def test_body_over_limit_is_413_before_reading(gateway: Proc) -> None:
    r = httpx.post(gateway.url + "/v1/completions", headers=AUTH, content=b"x" * 40000)
    assert r.status_code == 413
    assert "limits.max_body_bytes = 32768" in r.json()["error"]["message"]


def test_body_over_limit_without_content_length(gateway: Proc) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 5000

    r = httpx.post(gateway.url + "/v1/completions", headers=AUTH, content=chunks())
    assert r.status_code == 413


def test_unknown_route_and_method(gateway: Proc) -> None:
    r = httpx.get(gateway.url + "/nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Not Found"
    r = httpx.delete(gateway.url + "/v2/models/sim-model/generate", headers=AUTH)
    assert r.status_code == 405
    assert set(r.json()) == {"error"}


# --- auth ---------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401_in_openai_shape(gateway: Proc) -> None:
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.status_code == 401
    assert exc.value.body["code"] == "invalid_api_key"
    r = httpx.post(gateway.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 401
    r = httpx.post(gateway.url + f"/v2/models/{MODEL}/generate", json={"text_input": "x"})
    assert r.status_code == 401
    assert isinstance(r.json()["error"], str)


def test_second_key_works_and_health_is_open(gateway: Proc) -> None:
    bob = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_BOB, max_retries=0)
    assert next(m.id for m in bob.models.list()) == MODEL
    for path in ("/health", "/ready", "/metrics", "/v2/health/live"):
        assert httpx.get(gateway.url + path).status_code == 200
    text = httpx.get(gateway.url + "/metrics").text
    assert 'key="bob"' in text
    assert 'key="invalid"' in text


# --- overload -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_sim(workdir: Path) -> Iterator[Proc]:
    proc = start_sim(workdir, model=MODEL, ttft_ms=50, itl_ms=50, seed=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def capped_gateway(workdir: Path, slow_sim: Proc, keys_file: Path) -> Iterator[Proc]:
    proc = start_gateway(
        workdir,
        {
            "upstreams": [{"name": MODEL, "base_url": slow_sim.url}],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": {"max_in_flight": 3, "max_in_flight_per_key": 2, "retry_after_seconds": 7},
        },
    )
    yield proc
    proc.stop()


def test_in_flight_caps_answer_429_with_retry_after(capped_gateway: Proc) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 40, "stream": True, "ignore_eos": True}
    url = capped_gateway.url + "/v1/completions"
    bob = {"Authorization": f"Bearer {KEY_BOB}"}
    with (
        httpx.Client(timeout=10) as c1,
        httpx.Client(timeout=10) as c2,
        httpx.Client(timeout=10) as c3,
    ):
        with (
            c1.stream("POST", url, json=body, headers=AUTH) as s1,
            c2.stream("POST", url, json=body, headers=AUTH) as s2,
        ):
            assert (s1.status_code, s2.status_code) == (200, 200)
            r = c3.post(url, json=body, headers=AUTH)  # alice's third: per-key cap
            assert r.status_code == 429
            assert r.headers["retry-after"] == "7"
            assert len(r.headers.get_list("x-request-id")) == 1
            assert "limits.max_in_flight_per_key" in r.json()["error"]["message"]
            with c3.stream("POST", url, json=body, headers=bob) as s3:
                assert s3.status_code == 200  # bob still has room
                r = httpx.post(url, json=body, headers=bob)  # 4th overall: global cap
                assert r.status_code == 429
                assert "(limits.max_in_flight)" in r.json()["error"]["message"]
        # Streams closed: slots are free again.
        ok = httpx.post(url, json={**body, "stream": False, "max_tokens": 1}, headers=AUTH)
        assert ok.status_code == 200
    assert _metric(capped_gateway.url, "gpuserve_gateway_in_flight") == 0


def test_client_disconnect_mid_stream_aborts_upstream(capped_gateway: Proc, slow_sim: Proc) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(timeout=10) as c,
        c.stream("POST", capped_gateway.url + "/v1/completions", json=body, headers=AUTH) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert got[0].startswith("data: ")
        assert _metric(slow_sim.url, "vllm:num_requests_running") == 1
    # Client gone after 2 of 200 tokens (10 s of generation left): upstream aborted at once.
    assert _wait_metric(slow_sim.url, "vllm:num_requests_running", 0, timeout=2.0) == 0
    assert _wait_metric(capped_gateway.url, "gpuserve_gateway_in_flight", 0) == 0
    assert "request aborted" in slow_sim.log()


def test_disconnect_before_first_token_aborts_upstream_on_every_route(
    workdir: Path, keys_file: Path
) -> None:
    sim = start_sim(workdir, model=MODEL, ttft_ms=3000, itl_ms=5)
    gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "base_url": sim.url}]})
    try:
        for path, body in (
            ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True}),
            ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5}),
            (f"/v2/models/{MODEL}/generate", {"text_input": "x", "max_tokens": 5}),
            (f"/v2/models/{MODEL}/generate_stream", {"text_input": "x", "max_tokens": 5}),
        ):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(gw.url + path, json=body, timeout=0.5)
            # The gateway saw the client go and closed the upstream request.
            assert _wait_metric(sim.url, "vllm:num_requests_running", 0, timeout=1.5) == 0, path
        assert '"status":499' in gw.log()
    finally:
        gw.stop()
        sim.stop()


# --- upstream failures ----------------------------------------------------------------
def test_upstream_down_is_503_and_not_ready(workdir: Path) -> None:
    gw = start_gateway(
        workdir,
        {
            "upstreams": [
                {
                    "name": MODEL,
                    "base_url": f"http://127.0.0.1:{free_port()}",
                    "timeouts": {"connect": 1},
                }
            ]
        },
    )
    try:
        r = httpx.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "upstream_unavailable"
        ready = httpx.get(gw.url + "/ready")
        assert ready.status_code == 503
        assert ready.json()["models"][MODEL]["ready"] is False
        assert httpx.get(gw.url + "/health").status_code == 200
        assert httpx.get(gw.url + "/v1/models").status_code == 503
        assert _metric(gw.url, "gpuserve_gateway_upstream_errors_total") >= 1
    finally:
        gw.stop()


def test_upstream_hang_is_504(workdir: Path) -> None:
    sim = start_sim(workdir, model=MODEL, hang_rate=1.0)
    gw = start_gateway(
        workdir, {"upstreams": [{"name": MODEL, "base_url": sim.url, "timeouts": {"read": 0.5}}]}
    )
    try:
        t0 = time.monotonic()
        r = httpx.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - t0 < 3
        r = httpx.post(
            gw.url + f"/v2/models/{MODEL}/generate", json={"text_input": "x"}, timeout=10
        )
        assert r.status_code == 504
        assert isinstance(r.json()["error"], str)
    finally:
        gw.stop()
        sim.stop()


def test_upstream_crash_then_503(workdir: Path) -> None:
    sim = start_sim(workdir, model=MODEL, crash_after=1, ttft_ms=0, itl_ms=0)
    gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "base_url": sim.url}]})
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 200
        r = httpx.post(gw.url + "/v1/completions", json=body)  # the sim exits on this one
        assert r.status_code == 503
        sim.popen.wait(5)
        assert sim.popen.returncode == 70
        assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 503
    finally:
        gw.stop()
        sim.stop()


def test_upstream_500_is_relayed_in_openai_shape(workdir: Path) -> None:
    sim = start_sim(workdir, model=MODEL, error_rate=1.0)
    gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "base_url": sim.url}]})
    try:
        r = httpx.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 500
        assert "injected engine error" in r.json()["error"]["message"]
        assert 'upstream_errors_total{kind="status_500"' in httpx.get(gw.url + "/metrics").text
    finally:
        gw.stop()
        sim.stop()


def test_gateway_reaches_upstream_over_unix_socket(workdir: Path, tmp_path: Path) -> None:
    sock = str(tmp_path / "sim.sock")
    sim = start_sim(workdir, model=MODEL, uds=sock, ttft_ms=1, itl_ms=1)
    gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "uds": sock}]}, ready_path="/ready")
    try:
        r = httpx.post(
            gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3}
        )
        assert r.status_code == 200
        assert len(r.json()["choices"][0]["text"].split()) == 3
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)  # really a unix socket
    finally:
        gw.stop()
        sim.stop()


def test_stream_cut_by_a_killed_upstream_ends_with_the_same_string_code(workdir: Path) -> None:
    # issue 18: one `code` type across stream and non-stream errors.
    sim = start_sim(workdir, model=MODEL, ttft_ms=0, itl_ms=50)
    gw = start_gateway(workdir, {"upstreams": [{"name": MODEL, "base_url": sim.url}]})
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": True}
        events: list[str] = []
        with httpx.stream("POST", gw.url + "/v1/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        sim.popen.kill()
        last = json.loads(events[-1])
        assert last["error"]["code"] == "upstream_unavailable", events[-3:]
        assert last["error"]["type"] == "service_unavailable_error"
        # The non-stream answer while the upstream is down has the same code, and a string.
        r = httpx.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "upstream_unavailable"
    finally:
        gw.stop()
        sim.stop()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/nope", 404, "not_found"), ("/v1/models", 405, "method_not_allowed")],
)
def test_errors_without_a_named_code_get_a_string_code(gateway: Proc, path, status, code) -> None:
    r = httpx.request("DELETE" if status == 405 else "GET", gateway.url + path, headers=AUTH)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
