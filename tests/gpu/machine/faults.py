"""Faults and switches against the deployed stack on the GPU machine, through the role's nginx.

Run on the GPU host (outside the machine; it shares the host's network), with the host's
torch Python and the kit on PYTHONPATH (httpx). Prints one JSON object per check.

  faults.py kill-engine   kill -9 of vllm@llm's main process during a stream: how the client's
                          stream ends, systemd's restart, seconds until /ready is 200 again
  faults.py gpu-sampler FILE   sample nvidia-smi memory.used (MiB) every 0.5 s into FILE
  faults.py memory FILE   min/max/first/last of a sampler file
Environment: GPUSERVE_URL (default https://localhost), SSL_CERT_FILE (nginx's certificate),
GPUSERVE_API_KEY, MACHINE (path of machine.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

URL = os.environ.get("GPUSERVE_URL", "https://localhost")
KEY = os.environ.get("GPUSERVE_API_KEY", "sk-gpu-validation")
MACHINE = os.environ.get("MACHINE", "tests/gpu/machine/machine.sh")
UNIT = "vllm@llm.service"


def in_machine(*argv: str) -> str:
    return subprocess.run(
        ["bash", MACHINE, "exec", *argv], check=True, capture_output=True, text=True
    ).stdout.strip()


def unit_prop(name: str) -> str:
    return in_machine("systemctl", "show", "-p", name, "--value", UNIT)


def wait_ready(deadline_s: float) -> float | None:
    """The monotonic time at which /ready first answered 200, or None within deadline_s."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            if httpx.get(f"{URL}/ready", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def kill_engine() -> dict[str, object]:
    body = {"model": "phi-2", "prompt": "Count:", "max_tokens": 1800}
    body |= {"stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    restarts_before = int(unit_prop("NRestarts"))
    main_pid = unit_prop("MainPID")
    chunks = 0
    ended = "no end seen"
    status = 0
    last_line = ""
    killed_at = 0.0
    try:
        with httpx.stream(
            "POST", f"{URL}/v1/completions", json=body, headers=headers, timeout=60
        ) as resp:
            status = resp.status_code
            for line in resp.iter_lines():
                if not line:
                    continue
                last_line = line[:300]
                chunks += 1
                if chunks == 20:
                    in_machine("kill", "-9", main_pid)
                    killed_at = time.monotonic()
            ended = "stream closed by the server after its last line"
    except httpx.HTTPError as exc:
        ended = f"client error {type(exc).__name__}: {exc}"[:300]
    end_after_kill = time.monotonic() - killed_at if killed_at else None
    ready_at = wait_ready(600)
    return {
        "check": "kill -9 of the engine's main process during a stream",
        "http_status": status,
        "chunks_before_end": chunks,
        "how_the_stream_ended": ended,
        "last_line": last_line,
        "stream_end_s_after_kill": round(end_after_kill, 2) if end_after_kill else None,
        "killed_main_pid": main_pid,
        "new_main_pid": unit_prop("MainPID"),
        "systemd_restarts": int(unit_prop("NRestarts")) - restarts_before,
        "ready_again_s_after_kill": (
            round(ready_at - killed_at, 1) if ready_at and killed_at else None
        ),
    }


def gpu_sampler(path: str) -> None:
    with open(path, "w") as out:
        while True:
            used = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            out.write(f"{time.time():.1f} {used[0] if used else 'NA'}\n")
            out.flush()
            time.sleep(0.5)


def memory(path: str) -> dict[str, object]:
    with open(path) as samples:
        values = [int(v) for _, v in (line.split() for line in samples) if v.isdigit()]
    return {
        "samples": len(values),
        "first_mib": values[0] if values else None,
        "min_mib": min(values) if values else None,
        "max_mib": max(values) if values else None,
        "last_mib": values[-1] if values else None,
    }


def main(argv: list[str]) -> int:
    if argv[1:2] == ["kill-engine"]:
        print(json.dumps(kill_engine()))
    elif argv[1:2] == ["gpu-sampler"]:
        gpu_sampler(argv[2])
    elif argv[1:2] == ["memory"]:
        print(json.dumps(memory(argv[2])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
