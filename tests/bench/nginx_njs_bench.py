"""nginx CPU per streamed chunk with and without the nginx_proxy role's njs filters.

The role marks cut responses in the access log with a header and a body filter
(roles/nginx_proxy/files/gpuserve_response_end.js); the body filter runs once per buffer
nginx relays. This bench runs the local nginx twice per repeat, once with the role's njs
file loaded and both filters on, once without, in front of the same SSE upstream (one
chunk per token at a fixed inter-token gap, so nginx relays chunk by chunk as it does for
a model), and prints nginx's CPU time per relayed chunk for each (its one worker's and
master's utime+stime from /proc).

    python3 tests/bench/nginx_njs_bench.py [--streams 32] [--chunks 400] [--gap-ms 4]
        [--repeats 3]

Needs nginx and its njs module (Debian/Ubuntu: apt-get install nginx libnginx-mod-http-js).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NJS = ROOT / "roles/nginx_proxy/files/gpuserve_response_end.js"
TEMPLATE = ROOT / "roles/nginx_proxy/templates/nginx.conf.j2"
MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
CHUNK = (
    b'data: {"id":"cmpl-0","object":"text_completion","created":0,"model":"bench",'
    b'"choices":[{"index":0,"text":" token","logprobs":null,"finish_reason":null}]}\n\n'
)
CONF = """
{load}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {js_http}
    access_log {tmp}/access.log;
    upstream sse {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        location / {{
            {js_location}
            proxy_pass http://sse;
        }}
    }}
}}
"""


def js_directives(*names: str) -> str:
    """The role's own njs directives, as its nginx.conf template writes them (first of each)."""
    text = TEMPLATE.read_text()
    found = [re.search(rf"^\s*({name} [^;]*;)", text, re.M) for name in names]
    return " ".join(match.group(1) for match in found if match)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args) -> None:
    """Answers every request on the connection with one SSE stream, chunk by chunk."""
    frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(args.chunks):
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(args.gap_ms / 1000)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def client(port: int, args) -> int:
    """One stream through nginx; returns the number of SSE events it received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    await writer.drain()
    body = await reader.read()
    writer.close()
    if not body.endswith(b"0\r\n\r\n"):
        raise SystemExit(f"a stream through nginx ended without its last chunk: {body[-200:]!r}")
    return body.count(b"data: ")


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def nginx_pids(master: int) -> list[int]:
    kids = subprocess.run(
        ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [master, *map(int, kids)]


async def one_run(njs: bool, up_port: int, args) -> tuple[float, int, float]:
    """(nginx CPU µs per chunk, chunks, wall seconds) for one nginx with or without njs."""
    tmp = Path(tempfile.mkdtemp(prefix="njs-bench-"))
    port = free_port()
    conf = CONF.format(
        load=f"load_module {MODULE};" if njs else "",
        js_http=f"js_import gpuserve_response from {NJS}; {js_directives('js_var')}" if njs else "",
        js_location=js_directives("js_header_filter", "js_body_filter") if njs else "",
        tmp=tmp,
        port=port,
        up_port=up_port,
    )
    (tmp / "nginx.conf").write_text(conf)
    proc = await asyncio.create_subprocess_exec(
        "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        pids = nginx_pids(proc.pid)
        before, started = cpu_seconds(pids), time.perf_counter()
        counts = await asyncio.gather(*(client(port, args) for _ in range(args.streams)))
        wall = time.perf_counter() - started
        used = cpu_seconds(pids) - before
    finally:
        proc.send_signal(signal.SIGQUIT)
        await asyncio.wait_for(proc.wait(), timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    chunks = sum(counts)
    return used / chunks * 1e6, chunks, wall


async def bench(args: argparse.Namespace) -> None:
    up_port = free_port()
    server = await asyncio.start_server(
        lambda r, w: upstream(r, w, args), "127.0.0.1", up_port, backlog=1024
    )
    results: dict[str, list[float]] = {"plain": [], "njs": []}
    async with server:
        for repeat in range(args.repeats):
            for name in ("plain", "njs") if repeat % 2 == 0 else ("njs", "plain"):
                us, chunks, wall = await one_run(name == "njs", up_port, args)
                results[name].append(us)
                print(
                    f"repeat {repeat + 1} {name:5}: {us:6.2f} us/chunk",
                    f"({chunks} chunks, {wall:.1f} s)",
                )
    plain, njs = (statistics.median(results[k]) for k in ("plain", "njs"))
    print(
        f"median nginx CPU per chunk: plain {plain:.2f} us, njs filters {njs:.2f} us, "
        f"added {njs - plain:+.2f} us ({args.streams} streams x {args.chunks} chunks, "
        f"{args.gap_ms} ms apart, {os.cpu_count()} CPUs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=4.0, help="gap between chunks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    args = parser.parse_args()
    if shutil.which("nginx") is None or not MODULE.exists():
        raise SystemExit(
            f"needs nginx and its njs module ({MODULE}): apt-get install nginx libnginx-mod-http-js"
        )
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
