"""roles/serving_drain under the compose runtime (drain.yml, as nvidia_driver's reboot and
gpu_stack.yml's restore run it): a stream already running when nginx stops accepting gets all
its tokens while new connections are refused, then nginx, the gateway and the model service are
stopped; the restore starts the same containers again (none recreated) and gates on /ready."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from test_compose_runtime import HOST, KEY, PROJECT, docker, host_ip, request_ok, services

ROOT = Path(__file__).resolve().parents[3]
DRAIN = ROOT / "molecule/compose_runtime/drain.yml"


def drain_playbook(request_, step: str, **extra: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "-i", request_.config.option.ansible_inventory,
         "--extra-vars", json.dumps({"drain_step": step, **extra}), str(DRAIN)],
        capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def container_ids() -> dict[str, str]:
    out = docker(
        "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--format", '{{.Label "com.docker.compose.service"}}\t{{.ID}}',
    )  # fmt: skip
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nginx_proxy's self-signed default
    return ctx


def stream_through_nginx(lines: list[tuple[float, str]], started: threading.Event) -> None:
    """A 2000-token stream (10 s at the model's 5 ms per token), each line with its time."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    req = urllib.request.Request(
        f"https://{host_ip()}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=tls(), timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line:
                lines.append((time.monotonic(), line))
                started.set()


def probe_ready(results: list[tuple[float, str]], done: threading.Event) -> None:
    """/ready through nginx every 0.2 s: its status, or "refused" for a failed connection."""
    while not done.is_set():
        try:
            req = urllib.request.Request(f"https://{host_ip()}/ready")
            with urllib.request.urlopen(req, context=tls(), timeout=5) as resp:
                results.append((time.monotonic(), str(resp.status)))
        except urllib.error.HTTPError as err:
            results.append((time.monotonic(), str(err.code)))
        except OSError:
            results.append((time.monotonic(), "refused"))
        time.sleep(0.2)


def test_the_drain_finishes_the_running_stream_then_the_restore_brings_the_same_containers_back(
    request,
) -> None:
    before = container_ids()
    assert "gateway" in before, before
    docker("exec", HOST, "rm", "-f", "/tmp/drain-go")
    lines: list[tuple[float, str]] = []
    probes: list[tuple[float, str]] = []
    started, done = threading.Event(), threading.Event()
    stream = threading.Thread(target=stream_through_nginx, args=(lines, started), daemon=True)
    prober = threading.Thread(target=probe_ready, args=(probes, done), daemon=True)
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(
        target=lambda: result.update(run=drain_playbook(request, "main", serving_drain_timeout=60))
    )
    runner.start()
    prober.start()
    stream.start()
    assert started.wait(60), "the stream did not start"
    docker("exec", HOST, "touch", "/tmp/drain-go")  # the playbook drains now
    runner.join(timeout=600)
    done.set()
    stream.join(timeout=120)
    prober.join(timeout=30)
    run = result["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # The running stream got every token and its end, after nginx had stopped accepting.
    assert lines[-1][1] == "data: [DONE]", lines[-3:]
    assert len(lines) >= 2000, len(lines)
    refused = [t for t, status in probes if status == "refused"]
    assert refused, probes[-5:]
    assert refused[0] < lines[-1][0], "no connection was refused while the stream ran"
    assert all(status == "refused" for t, status in probes if t >= refused[0]), probes[-10:]
    # Everything stopped; nginx by its graceful exit (0), not killed at the timeout.
    now = services()
    assert set(now) == set(before), now
    assert all(status.startswith("Exited") for status in now.values()), now
    assert now["nginx"].startswith("Exited (0)"), now

    back = drain_playbook(request, "restore")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    assert container_ids() == before  # started again, none recreated
    for name, status in services().items():
        assert "(healthy)" in status, (name, status)
    status, body = request_ok()
    assert status == 200, body
