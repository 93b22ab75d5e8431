"""`serve` on the socket systemd passes (LISTEN_FDS), and workers that outlive a killed
supervisor finish their streams, then exit (gpuserve_api/listener.py).

The processes are real: the test plays systemd's part, holding the listening socket and
starting the gateway with it as descriptor 3, exactly as sd_listen_fds(3) describes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from api_env import MODEL
from gpuserve_sim.procs import Proc, free_port, start_sim


@pytest.fixture(scope="module")
def slow_sim(workdir: Path) -> Iterator[Proc]:
    """5 ms per token: a 600-token stream lasts about 3 s."""
    proc = start_sim(workdir, model=MODEL, ttft_ms=5, itl_ms=5, max_model_len=2048, seed=3)
    yield proc
    proc.stop()


def listening_socket(kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    return sock


def start_activated(
    workdir: Path,
    sim: Proc,
    sock: socket.socket,
    workers: int,
    fds: int = 1,
    config_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """The gateway as systemd starts it: LISTEN_PID is its own pid, the socket is fd 3.

    listen.port in its config is config_port (default: another free port), which it must
    not bind.
    """
    config = {
        "listen": {"host": "127.0.0.1", "port": config_port or free_port(), "workers": workers},
        "upstreams": [{"name": MODEL, "base_url": sim.url}],
        "auth": {"enabled": False},
    }
    path = workdir / f"activated-{sock.getsockname()[1]}.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    fileno = sock.fileno()
    # A small launcher moves the socket to descriptor 3 and execs the gateway (same pid).
    launch = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1]));"
        f"os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='{fds}');"
        "os.execv(sys.executable, [sys.executable, '-m', 'gpuserve_api', '--config', sys.argv[2]])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", launch, str(fileno), str(path)],
        pass_fds=(fileno,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_health(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the gateway did not answer /health on the passed socket")


def workers_of(pid: int) -> list[int]:
    """The uvicorn workers among pid's children (not multiprocessing's resource tracker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [
        int(p) for p in text.split() if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_on_the_socket_systemd_passes_and_binds_nothing_itself(
    workdir: Path, slow_sim: Proc, workers: int
) -> None:
    with listening_socket() as sock:
        config_port = free_port()
        proc = start_activated(workdir, slow_sim, sock, workers, config_port=config_port)
        try:
            wait_health(sock.getsockname()[1], proc)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{config_port}/health", timeout=1)
        finally:
            stop(proc)
        # uvicorn re-raises the SIGTERM it handled once it has shut down.
        assert proc.returncode in (0, -signal.SIGTERM)


def test_workers_finish_their_streams_after_the_supervisor_is_killed(
    workdir: Path, slow_sim: Proc
) -> None:
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = start_activated(workdir, slow_sim, sock, workers=2)
        workers: list[int] = []
        try:
            wait_health(port, proc)
            workers = workers_of(proc.pid)
            assert len(workers) == 2, workers
            body = {
                "model": MODEL,
                "prompt": "x",
                "max_tokens": 600,
                "ignore_eos": True,
                "stream": True,
            }
            lines = []
            with httpx.stream(
                "POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30
            ) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if line.startswith("data: ") and not lines:
                        os.kill(proc.pid, signal.SIGKILL)  # the supervisor, mid-stream
                    if line:
                        lines.append(line)
            proc.wait(timeout=5)
            # The stream went on to its end after the supervisor died ...
            assert lines[-1] == "data: [DONE]", lines[-3:]
            chunks = [json.loads(ln[6:]) for ln in lines[:-1] if '"usage"' not in ln]
            assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"]) >= 590
            # ... and the orphaned workers then exit by themselves (PR_SET_PDEATHSIG).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(alive(w) for w in workers):
                time.sleep(0.2)
            assert not any(alive(w) for w in workers), "orphaned workers still running"
        finally:
            stop(proc)
            for w in workers:
                if alive(w):
                    os.kill(w, signal.SIGKILL)


@pytest.mark.parametrize(
    ("kind", "fds", "needle"),
    [
        (socket.SOCK_STREAM, 2, "systemd passed 2 sockets (LISTEN_FDS)"),
        (socket.SOCK_DGRAM, 1, "the gateway serves on a TCP socket"),
    ],
)
def test_a_wrong_socket_unit_is_one_clear_line(
    workdir: Path, slow_sim: Proc, kind: int, fds: int, needle: str
) -> None:
    with listening_socket(kind) as sock:
        proc = start_activated(workdir, slow_sim, sock, workers=1, fds=fds)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpuserve-gateway: ")
    assert needle in lines[0]
