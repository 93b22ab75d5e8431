#!/usr/bin/python3
"""Health gate of one vLLM instance (installed by the vllm_service role as wait-healthy).

Polls GET /health over a unix socket or TCP until it answers 200. Gives up, printing the
reason and the unit's last journal lines, when the timeout passes, the unit fails, or
systemd restarted it --max-restarts times meanwhile (a crash loop will not heal).

    wait-healthy --unit vllm@phi-2.service (--uds /run/vllm/phi-2.sock | --url http://127.0.0.1:8100)
                 [--timeout 900] [--interval 2] [--max-restarts 3] [--journal-lines 40]

Exit 0: healthy. Exit 1: not healthy (reason on stdout). Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import time
import urllib.parse


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def probe(uds: str | None, url: str | None, timeout: float = 5.0) -> tuple[int, str]:
    """GET /health; (status, short body) or (0, the connection error)."""
    try:
        if uds:
            conn: http.client.HTTPConnection = _UnixConnection(uds, timeout)
        else:
            parsed = urllib.parse.urlsplit(url or "")
            conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=timeout)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        body = resp.read(300).decode("utf-8", "replace")
        conn.close()
        return resp.status, body
    except OSError as err:
        return 0, f"{type(err).__name__}: {err}"
    except http.client.HTTPException as err:
        return 0, f"{type(err).__name__}: {err}"


def unit_state(unit: str) -> dict[str, str]:
    out = subprocess.run(
        ["systemctl", "show", unit, "-p", "ActiveState,SubState,NRestarts,Result"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(unit: str, lines: int) -> str:
    return subprocess.run(
        ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wait-healthy", description=__doc__.splitlines()[0])
    p.add_argument("--unit", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--uds")
    where.add_argument("--url")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--journal-lines", type=int, default=40)
    args = p.parse_args(argv)

    start = time.monotonic()
    first = unit_state(args.unit)
    base_restarts = int(first.get("NRestarts", "0") or 0)
    last = "no answer yet"
    reason = ""
    while True:
        status, body = probe(args.uds, args.url)
        if status == 200:
            print(f"{args.unit}: /health 200 after {time.monotonic() - start:.1f} s")
            return 0
        last = f"/health answered {status}: {body.strip()}" if status else body
        state = unit_state(args.unit)
        restarts = int(state.get("NRestarts", "0") or 0) - base_restarts
        active = state.get("ActiveState", "")
        if active == "failed":
            reason = f"the unit failed ({state.get('Result', '?')})"
        elif active == "inactive":
            reason = "the unit is not running"
        elif restarts >= args.max_restarts:
            reason = f"the unit crashed and was restarted {restarts} times (crash loop)"
        elif time.monotonic() - start > args.timeout:
            reason = f"no healthy answer within {args.timeout:.0f} s"
        if reason:
            break
        time.sleep(args.interval)
    print(
        f"{args.unit} failed its health gate: {reason}; last probe: {last}.\n"
        f"Last {args.journal_lines} journal lines of {args.unit}:\n"
        f"{journal(args.unit, args.journal_lines)}"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
