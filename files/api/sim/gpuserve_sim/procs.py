"""Start the simulator and the gateway as real processes on loopback (tests, bench).

``start_gateway`` runs ``python -m gpuserve_api``: gpuserve-api must be installed too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its log file; ``stop()`` ends exactly this process."""

    def __init__(
        self, popen: subprocess.Popen[bytes], log_path: Path, url: str, uds: str | None = None
    ) -> None:
        self.popen = popen
        self.log_path = log_path
        self.url = url
        self.uds = uds  # the unix socket it listens on, if any

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def _spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )


def wait_ready(
    url: str, proc: Proc, timeout: float = 20.0, path: str = "/health", uds: str | None = None
) -> None:
    """Poll ``url + path`` until 200 (or the process dies / the timeout passes)."""
    deadline = time.monotonic() + timeout
    transport = httpx.HTTPTransport(uds=uds) if uds else None
    with httpx.Client(transport=transport, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"process exited early:\n{proc.log()}")
            try:
                if client.get(url + path).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"{url}{path} not ready after {timeout}s:\n{proc.log()}")


def start_sim(workdir: Path, wait: bool = True, **flags: Any) -> Proc:
    """``gpuserve-sim`` with ``--flag value`` for each keyword (port chosen if absent)."""
    uds = flags.get("uds")
    if not uds:
        flags.setdefault("port", free_port())
    args = ["-m", "gpuserve_sim"]
    for key, value in flags.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    name = f"sim-{flags.get('port') or Path(str(uds)).name}"
    url = "http://localhost" if uds else f"http://127.0.0.1:{flags['port']}"
    log_path = workdir / f"{name}.log"
    proc = Proc(_spawn(args, log_path), log_path, url, str(uds) if uds else None)
    if wait:
        try:
            wait_ready(url, proc, uds=uds)
        except BaseException:
            proc.stop()  # never leave a half-started process behind
            raise
    return proc


def start_gateway(
    workdir: Path, config: dict[str, Any], wait: bool = True, ready_path: str = "/health"
) -> Proc:
    """``gpuserve-gateway`` with ``config`` written as YAML (listen port chosen)."""
    port = free_port()
    config = {**config, "listen": {"host": "127.0.0.1", "port": port, **config.get("listen", {})}}
    config["listen"]["port"] = port
    path = workdir / f"gateway-{port}.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / f"gateway-{port}.log"
    proc = Proc(
        _spawn(["-m", "gpuserve_api", "--config", str(path)], log_path),
        log_path,
        f"http://127.0.0.1:{port}",
    )
    if wait:
        try:
            wait_ready(proc.url, proc, path=ready_path)
        except BaseException:
            proc.stop()
            raise
    return proc
