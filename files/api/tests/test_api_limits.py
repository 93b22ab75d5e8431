"""In-flight caps are exact per gateway, whatever ``listen.workers`` is: a real gateway
with 2 workers, and the shared counters themselves across real processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_env import KEY_ALICE, KEY_BOB, MODEL
from gpuserve_api.auth import hash_key
from gpuserve_api.config import Limits, parse_config
from gpuserve_api.limits import InFlight
from gpuserve_api.middleware import GatewayMiddleware
from gpuserve_sim.procs import Proc, start_gateway, start_sim

ALICE = {"Authorization": f"Bearer {KEY_ALICE}"}
BOB = {"Authorization": f"Bearer {KEY_BOB}"}
STREAM = {"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def two_workers(workdir: Path, keys_file: Path) -> Iterator[Proc]:
    sim = start_sim(workdir, model=MODEL, ttft_ms=20, itl_ms=50, seed=2)
    gw = start_gateway(
        workdir,
        {
            "listen": {"workers": 2},
            "upstreams": [{"name": MODEL, "base_url": sim.url}],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": {"max_in_flight": 5, "max_in_flight_per_key": 3, "retry_after_seconds": 4},
        },
        ready_path="/ready",
    )
    yield gw
    gw.stop()
    sim.stop()


def _workers(gw: Proc) -> set[int]:
    """The gateway's worker processes: children of the uvicorn master (not the
    multiprocessing resource tracker)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            pid = int(stat.parent.name)
            if ppid == gw.popen.pid and "resource_tracker" not in _cmdline(pid):
                kids.add(pid)
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _open(stack: contextlib.ExitStack, gw: Proc, headers: dict[str, str], n: int) -> list[int]:
    """Open ``n`` streams, each on its own connection (so both workers get some)."""
    statuses = []
    for _ in range(n):
        client = stack.enter_context(httpx.Client(timeout=10))
        resp = stack.enter_context(
            client.stream("POST", gw.url + "/v1/completions", json=STREAM, headers=headers)
        )
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.headers["retry-after"] in ("1", "4")  # the gateways' settings
            resp.read()
    return statuses


def _open_when_released(gw: Proc, headers: dict[str, str], n: int) -> list[int]:
    """``_open`` of ``n`` streams, retried for up to 5 s while a closed stream's slot is still
    being released; the last attempt's statuses (a slot that never frees still fails)."""
    deadline = time.monotonic() + 5
    while True:
        with contextlib.ExitStack() as stack:
            statuses = _open(stack, gw, headers, n)
        if statuses == [200] * n or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def test_caps_hold_across_two_workers(two_workers: Proc) -> None:
    assert len(_workers(two_workers)) == 2
    with contextlib.ExitStack() as stack:
        # 8 connections from one key: exactly the per-key cap gets through, on any worker.
        assert sorted(_open(stack, two_workers, ALICE, 8)) == [200] * 3 + [429] * 5
        # Another key: room up to the global cap (5), then 429 for it too.
        assert sorted(_open(stack, two_workers, BOB, 3)) == [200] * 2 + [429]
    # All streams closed: every slot is free again, on every worker, once the workers have
    # seen the clients' closes (asynchronous: a worker may still be relaying when the next
    # request comes; seen as one 429 in a fresh-clone run).
    assert _open_when_released(two_workers, ALICE, 3) == [200] * 3


def test_a_killed_worker_leaves_no_slot_taken(two_workers: Proc) -> None:
    with contextlib.ExitStack() as stack:
        assert _open(stack, two_workers, ALICE, 3) == [200] * 3
        before = _workers(two_workers)
        for pid in before:
            os.kill(pid, signal.SIGKILL)  # the workers this test's gateway started
        _wait_new_workers(two_workers, before)
    with contextlib.ExitStack() as stack:
        assert _open(stack, two_workers, ALICE, 4) == [200] * 3 + [429]


def _wait_new_workers(gw: Proc, before: set[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _workers(gw)
        if len(now) == 2 and not now & before:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(gw.url + "/health", timeout=1).status_code == 200:
                    return
        time.sleep(0.1)
    pytest.fail(f"workers not restarted:\n{gw.log()[-2000:]}")


def test_sighup_with_a_new_keys_file_keeps_caps_shared(workdir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.yml"
    entry = "  - name: {0}\n    sha256: {1}\n"
    keys.write_text("keys:\n" + entry.format("alice", hash_key(KEY_ALICE)), encoding="utf-8")
    sim = start_sim(workdir, model=MODEL, ttft_ms=20, itl_ms=50, seed=3)
    gw = start_gateway(
        workdir,
        {
            "listen": {"workers": 2},
            "upstreams": [{"name": MODEL, "base_url": sim.url}],
            "auth": {"enabled": True, "keys_file": str(keys)},
            "limits": {"max_in_flight": 5, "max_in_flight_per_key": 2},
        },
        ready_path="/ready",
    )
    try:
        assert httpx.get(gw.url + "/v1/models", headers=BOB).status_code == 401
        keys.write_text(
            "keys:\n" + entry.format("bob", hash_key(KEY_BOB)) + entry.format("alice",
            hash_key(KEY_ALICE)), encoding="utf-8"
        )  # fmt: skip
        before = _workers(gw)
        gw.popen.send_signal(signal.SIGHUP)  # how the role applies a config change
        _wait_new_workers(gw, before)
        with contextlib.ExitStack() as stack:
            assert sorted(_open(stack, gw, BOB, 4)) == [200] * 2 + [429] * 2
            assert sorted(_open(stack, gw, ALICE, 4)) == [200] * 2 + [429] * 2
    finally:
        gw.stop()
        sim.stop()


# --- the shared counters across real processes -----------------------------------------
def _hold(path: str, n: int, ready: multiprocessing.synchronize.Event, die: bool) -> None:
    """Child process: take ``n`` slots for alice, then die without releasing or wait."""
    counters = InFlight(Limits(max_in_flight=3, max_in_flight_per_key=3), ["alice"], path)
    counters.open()
    for _ in range(n):
        assert counters.try_acquire("alice") is None
    ready.set()
    if die:
        os._exit(0)  # no release, no close: a crashed worker
    time.sleep(30)


def test_counters_are_shared_and_a_dead_process_rows_are_reclaimed(tmp_path: Path) -> None:
    path = str(tmp_path / "in-flight")
    limits = Limits(max_in_flight=3, max_in_flight_per_key=3)
    InFlight(limits, ["alice"], path, rows=4).prepare()
    mine = InFlight(limits, ["alice"], path)
    mine.open()
    ctx = multiprocessing.get_context("fork")
    live_ready, dead_ready = ctx.Event(), ctx.Event()
    live = ctx.Process(target=_hold, args=(path, 1, live_ready, False))
    dead = ctx.Process(target=_hold, args=(path, 2, dead_ready, True))
    live.start()
    dead.start()
    try:
        assert live_ready.wait(10)
        assert dead_ready.wait(10)
        dead.join(10)
        # The dead process's 2 slots are given back before a request is refused.
        assert mine.try_acquire("alice") is None
        assert mine.try_acquire("alice") is None
        assert mine.counts("alice") == (3, 3)  # 1 held by the live process, 2 by us
        assert mine.try_acquire("alice") == "limits.max_in_flight"
        assert mine.try_acquire("anonymous") == "limits.max_in_flight"
        mine.release("alice")
        assert mine.try_acquire("anonymous") is None
    finally:
        live.kill()
        live.join(10)
        mine.close()


def test_a_stream_frees_its_slot_before_its_last_byte_is_sent() -> None:
    """A client that opens its next request on a stream's last chunk must not meet a 429
    at the cap: the slot is free by the time the final body message goes out (measured
    on the GPU host: 429s at exactly the per-key cap, docs/gpu-validation.md)."""
    config = parse_config({"upstreams": [{"name": MODEL, "base_url": "http://127.0.0.1:9"}]})
    limiter = InFlight(config.limits, [])
    limiter.open()
    seen: list[tuple[bool, int]] = []

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})  # type: ignore[operator]

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            seen.append((bool(message.get("more_body")), limiter.counts("anonymous")[0]))

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = GatewayMiddleware(app, config, None, limiter, None, [])
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
    assert seen == [(True, 1), (False, 0)], seen
