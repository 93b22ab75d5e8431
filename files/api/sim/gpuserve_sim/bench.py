"""Loopback load test: the gateway vs talking to the simulator directly.

    python -m gpuserve_sim.bench [--levels 1,16,64,256] [--duration 4] [--json PATH]

For each concurrency level, N clients each keep one keep-alive connection and send
streaming /v1/completions requests back to back (``max_tokens`` tokens, ignore_eos).
Reported per target: requests/s, streamed chunks/s, time to first token p50/p99; and
the gateway's added TTFT (gateway minus direct). Then the gateway's own ceiling: the
simulator at zero latency, chunks/s per CPU second the gateway process used.

The load generator is a minimal asyncio HTTP/1.1 client (chunked decoding only), so
it costs less CPU than the servers it measures; everything shares this machine.
It benchmarks the gateway, so gpuserve-api must be installed beside gpuserve-sim.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
from gpuserve_api.auth import hash_key

from .procs import Proc, start_gateway, start_sim

MODEL = "bench-model"
KEY = "bench-key-0000000000000000"


@dataclass
class RunResult:
    target: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    chunks: int
    ttft_ms: list[float] = field(default_factory=list, repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_pressure_before: float | None = None
    cpu_pressure_after: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.duration_s

    def pct(self, q: float) -> float:
        if not self.ttft_ms:
            return float("nan")
        data = sorted(self.ttft_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "ttft_ms"}
        out.update(
            # CPU per chunk the clients received, per process (microseconds).
            cpu_us_per_chunk={
                k: round(1e6 * v / self.chunks, 1) if self.chunks else None
                for k, v in self.cpu_s.items()
            },
            rps=round(self.rps, 1),
            chunks_per_s=round(self.chunks_per_s, 1),
            ttft_p50_ms=round(self.pct(0.5), 3),
            ttft_p99_ms=round(self.pct(0.99), 3),
            ttft_mean_ms=round(statistics.fmean(self.ttft_ms), 3) if self.ttft_ms else None,
        )
        return out


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its live children (uvicorn workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class _Conn(asyncio.Protocol):
    """One keep-alive client connection: HTTP parsed in C (httptools), SSE events counted
    in the body bytes as they arrive (no per-chunk awaits), so the load generator costs
    far less CPU than the servers it measures."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.done: asyncio.Future[None] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.t0 = 0.0
        self.ttft: float | None = None
        self.events = 0
        self.last = b""
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            if self.done is not None and not self.done.done():
                self.done.set_exception(ValueError(f"bad HTTP: {err}"))

    def on_body(self, body: bytes) -> None:
        if self.ttft is None:
            self.ttft = (time.perf_counter() - self.t0) * 1000
        # SSE events end with a blank line; one may straddle two reads.
        self.events += body.count(b"\n\n") + (self.last == b"\n" and body[:1] == b"\n")
        self.last = body[-1:]
        self.tail = (self.tail + body)[-16:]

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def request(self, data: bytes) -> tuple[float | None, int, bool]:
        assert self.transport is not None
        self.parser = httptools.HttpResponseParser(self)
        self.ttft, self.events, self.last, self.tail = None, 0, b"", b""
        self.done = asyncio.get_running_loop().create_future()
        self.t0 = time.perf_counter()
        self.transport.write(data)
        await self.done
        ok = self.parser.get_status_code() == 200
        if b"data: [DONE]" in self.tail:
            self.events -= 1
        return self.ttft, self.events, ok


async def _connect(addr: tuple[str, str, int]) -> _Conn:
    loop = asyncio.get_running_loop()
    if addr[0] == "unix":
        _, conn = await loop.create_unix_connection(_Conn, addr[1])
    else:
        _, conn = await loop.create_connection(_Conn, addr[1], addr[2])
    return conn


async def _client(
    addr: tuple[str, str, int],
    request: bytes,
    stop_at: float,
    warm_until: float,
    res: RunResult,
) -> None:
    conn = await _connect(addr)
    try:
        while time.perf_counter() < stop_at:
            if conn.lost:
                conn = await _connect(addr)
            try:
                ttft, chunks, ok = await conn.request(request)
            except (ConnectionError, ValueError):
                res.errors += 1
                if conn.transport is not None:
                    conn.transport.close()
                conn = await _connect(addr)
                continue
            if time.perf_counter() < warm_until:
                continue
            if not ok:
                res.errors += 1
                continue
            res.requests += 1
            res.chunks += chunks
            if ttft is not None:
                res.ttft_ms.append(ttft)
    finally:
        if conn.transport is not None:
            conn.transport.close()


def _address(proc: Proc) -> tuple[str, str, int]:
    """("unix", path, 0) for a process on a unix socket, else ("tcp", host, port)."""
    if proc.uds:
        return ("unix", proc.uds, 0)
    host, port = proc.url.removeprefix("http://").split(":")
    return ("tcp", host, int(port))


async def _run(
    proc: Proc,
    target: str,
    concurrency: int,
    duration: float,
    warmup: float,
    max_tokens: int,
    pids: dict[str, int],
) -> RunResult:
    addr = _address(proc)
    host = "localhost" if addr[0] == "unix" else addr[1]
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": "bench",
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    res = RunResult(target, concurrency, duration, 0, 0, 0)
    res.cpu_pressure_before = cpu_pressure()
    start = time.perf_counter()
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    cpu0["bench"] = time.process_time()
    await asyncio.gather(
        *(
            _client(addr, request, start + warmup + duration, start + warmup, res)
            for _ in range(concurrency)
        )
    )
    res.duration_s = time.perf_counter() - start - warmup
    res.cpu_s = {name: round(_cpu_seconds(pid) - cpu0[name], 3) for name, pid in pids.items()}
    res.cpu_s["bench"] = round(time.process_time() - cpu0["bench"], 3)
    res.cpu_pressure_after = cpu_pressure()
    return res


def cpu_pressure() -> float | None:
    """Linux PSI: share of the last 10 s in which runnable tasks waited for a CPU (%)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split("avg10=")[1].split()[0])


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | direct req/s | gateway req/s | direct chunks/s | gateway chunks/s "
        "| throughput kept | direct TTFT p50/p99 ms | gateway TTFT p50/p99 ms "
        "| added p50/p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, g = r["direct"], r["gateway"]
        lines.append(
            f"| {r['concurrency']} | {d['rps']:.1f} | {g['rps']:.1f} | {d['chunks_per_s']:.0f} "
            f"| {g['chunks_per_s']:.0f} | {r['kept_pct']:.1f}% "
            f"| {d['ttft_p50_ms']:.2f} / {d['ttft_p99_ms']:.2f} "
            f"| {g['ttft_p50_ms']:.2f} / {g['ttft_p99_ms']:.2f} "
            f"| {r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f} |"
        )
    return "\n".join(lines)


def _cpu_table(rows: list[dict[str, Any]]) -> str:
    """CPU per process from /proc: cores used, and us of CPU per chunk received."""
    lines = [
        "| streams | path | simulator | gateway | load generator | total cores |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for path in ("direct", "gateway"):
            d = r[path]
            per = d["cpu_us_per_chunk"]
            cells = []
            total = 0.0
            for name in ("sim", "gateway", "bench"):
                cores = d["cpu_s"].get(name, 0.0) / d["duration_s"]
                total += cores
                if path == "direct" and name == "gateway":
                    cells.append("-")
                    continue
                us = per.get(name)
                cells.append(f"{cores:.2f} ({us:.1f} us/chunk)" if us is not None else "-")
            lines.append(f"| {r['concurrency']} | {path} | {' | '.join(cells)} | {total:.2f} |")
    return "\n".join(lines)


def _gateway_config(sim: Proc, keys_file: Path, workers: int = 1) -> dict[str, Any]:
    upstream = {"uds": sim.uds} if sim.uds else {"base_url": sim.url}
    return {
        "listen": {"workers": workers},
        "upstreams": [{"name": MODEL, **upstream}],
        "auth": {"enabled": True, "keys_file": str(keys_file)},
        "limits": {"max_in_flight": 4096, "max_in_flight_per_key": 4096},
        "logging": {"level": "warning", "access_log": True},
    }


def _start_pair(
    work: Path, keys_file: Path, workers: int, ttft_ms: float, itl_ms: float, upstream: str = "uds"
) -> tuple[Proc, Proc]:
    """The simulator at this timing, and a gateway in front of it (both ready). The
    simulator listens on a unix socket (``upstream`` "uds", as the vllm_service role's
    default ``vllm_service_listen: uds``) or on 127.0.0.1 ("tcp")."""
    flags: dict[str, Any] = {}
    if upstream == "uds":
        flags["uds"] = str(work / f"sim-{ttft_ms:g}.sock")
    sim = start_sim(
        work,
        model=MODEL,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        max_num_seqs=4096,
        log_level="warning",
        **flags,
    )
    try:
        gw = start_gateway(work, _gateway_config(sim, keys_file, workers), ready_path="/ready")
    except BaseException:
        sim.stop()
        raise
    return sim, gw


def _merge(runs: list[RunResult]) -> RunResult:
    """Several measurement windows of one target as one result."""
    out = RunResult(runs[0].target, runs[0].concurrency, 0.0, 0, 0, 0)
    for r in runs:
        out.duration_s += r.duration_s
        out.requests += r.requests
        out.errors += r.errors
        out.chunks += r.chunks
        out.ttft_ms.extend(r.ttft_ms)
        for k, v in r.cpu_s.items():
            out.cpu_s[k] = round(out.cpu_s.get(k, 0.0) + v, 3)
    pressures = [r.cpu_pressure_after for r in runs if r.cpu_pressure_after is not None]
    out.cpu_pressure_before = runs[0].cpu_pressure_before
    out.cpu_pressure_after = max(pressures) if pressures else None
    return out


async def _levels(args: argparse.Namespace, sim: Proc, gw: Proc) -> list[dict[str, Any]]:
    pids = {"sim": sim.popen.pid, "gateway": gw.popen.pid}
    rows = []
    for conc in args.levels:
        direct_runs, gateway_runs = [], []
        for _ in range(args.repeat):  # interleaved: both targets see the same machine load
            direct_runs.append(
                await _run(sim, "direct", conc, args.duration, args.warmup, args.max_tokens, pids)
            )
            gateway_runs.append(
                await _run(gw, "gateway", conc, args.duration, args.warmup, args.max_tokens, pids)
            )
        direct, gateway = _merge(direct_runs), _merge(gateway_runs)
        d, g = direct.summary(), gateway.summary()
        row = {
            "concurrency": conc,
            "direct": d,
            "gateway": g,
            "kept_pct": 100.0 * g["chunks_per_s"] / d["chunks_per_s"]
            if d["chunks_per_s"]
            else float("nan"),
            "added_p50_ms": g["ttft_p50_ms"] - d["ttft_p50_ms"],
            "added_p99_ms": g["ttft_p99_ms"] - d["ttft_p99_ms"],
        }
        rows.append(row)
        print(
            f"  {conc:>4} streams: direct {d['chunks_per_s']:.0f} chunks/s, gateway "
            f"{g['chunks_per_s']:.0f} chunks/s ({row['kept_pct']:.1f}%), added TTFT p50 "
            f"{row['added_p50_ms']:+.2f} ms, errors {d['errors']}/{g['errors']}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m gpuserve_sim.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--levels", default="1,16,64,256", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds discarded per run")
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="interleaved direct/gateway windows per level (results merged)",
    )
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--ceiling-streams", type=int, default=64)
    p.add_argument("--gateway-workers", type=int, default=1)
    p.add_argument(
        "--upstream",
        choices=("uds", "tcp"),
        default="uds",
        help="how the gateway (and the direct client) reach the simulator: a unix socket, "
        "as the roles deploy vLLM, or 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument(
        "--json",
        default=str(Path(tempfile.gettempdir()) / "gpuserve-bench-api.json"),
        help="where to write the results (default: %(default)s)",
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: dict[str, Any] = {
        "machine": _machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    with tempfile.TemporaryDirectory(prefix="gpuserve-bench-") as tmp:
        work = Path(tmp)
        keys = work / "keys.yml"
        keys.write_text(f'keys:\n  - name: bench\n    sha256: "{hash_key(KEY)}"\n')
        print(
            f"realistic timing: ttft {args.ttft_ms} ms, itl {args.itl_ms} ms, "
            f"{args.max_tokens} tokens per request",
            file=sys.stderr,
        )
        sim, gw = _start_pair(
            work, keys, args.gateway_workers, args.ttft_ms, args.itl_ms, args.upstream
        )
        try:
            rows = asyncio.run(_levels(args, sim, gw))
        finally:
            gw.stop()
            sim.stop()
        out["realistic"] = rows
        print("gateway ceiling: simulator at zero latency", file=sys.stderr)
        sim, gw = _start_pair(work, keys, args.gateway_workers, 0, 0, args.upstream)
        try:
            pids = {"sim": sim.popen.pid, "gateway": gw.popen.pid}
            ceil = asyncio.run(
                _run(gw, "gateway", args.ceiling_streams, args.duration, args.warmup, 256, pids)
            )
            direct = asyncio.run(
                _run(sim, "direct", args.ceiling_streams, args.duration, args.warmup, 256, pids)
            )
        finally:
            gw.stop()
            sim.stop()
        gcpu = ceil.cpu_s["gateway"]
        out["ceiling"] = {
            "gateway": ceil.summary(),
            "direct": direct.summary(),
            "gateway_chunks_per_cpu_second": round(ceil.chunks / gcpu, 1) if gcpu else None,
            "sim_chunks_per_cpu_second_direct": round(direct.chunks / direct.cpu_s["sim"], 1)
            if direct.cpu_s["sim"]
            else None,
        }
    m = out["machine"]
    pressures = [
        r[t]["cpu_pressure_after"]
        for r in out["realistic"]
        for t in ("direct", "gateway")
        if r[t]["cpu_pressure_after"] is not None
    ]
    print(f"\nMachine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}")
    if pressures:
        print(
            f"CPU pressure (PSI some avg10) during the runs: {min(pressures):.0f}-"
            f"{max(pressures):.0f}% (share of time runnable tasks waited for a CPU)"
        )
    print()
    print(_table(out["realistic"]))
    print()
    print(_cpu_table(out["realistic"]))
    c = out["ceiling"]
    print(
        f"\nGateway ceiling (simulator at zero latency, {args.ceiling_streams} streams, 256 "
        f"tokens each): {c['gateway']['chunks_per_s']:.0f} chunks/s through the gateway "
        f"using {c['gateway']['cpu_s']['gateway']:.2f} CPU-s of the gateway in "
        f"{c['gateway']['duration_s']:.1f} s = {c['gateway_chunks_per_cpu_second']:.0f} "
        f"chunks/s per gateway CPU core (direct: {c['direct']['chunks_per_s']:.0f} chunks/s)"
    )
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nJSON written to {args.json}")


if __name__ == "__main__":
    main()
