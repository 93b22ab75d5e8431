"""Full-stack benchmark (issue 17): raw vLLM against client -> nginx -> gateway -> vLLM.

Closed loop: at each concurrency level, N streams each send their next streamed completion
as soon as the last one ends (fixed input/output lengths, EOS ignored), spread over several
client processes. Paths are interleaved (their order alternates per level and repeat) and
every (level, path) is repeated, because raw vLLM alone varies by several percent between
runs. Only chunks that arrive inside the measuring window count; requests that start in it
give TTFT/TPOT. The CPU time of named server processes (``--cpu NAME=CMDLINE_SUBSTRING``,
from /proc) over the window, divided by the window's chunks, is their CPU per chunk.

  python tests/bench/fullstack_bench.py run --path raw=http://127.0.0.1:8000 \
      --path stack=https://localhost --cacert /etc/nginx/tls/gpuserve.crt \
      --api-key K1 --api-key K2 --model phi-2 --cpu gateway='gpuserve-gateway serve' \
      --cpu nginx='nginx: worker' --label phi2 --out phi2.json
  python tests/bench/fullstack_bench.py report phi2.json llama1b.json > table.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import ssl
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from serving_bench import percentile  # same folder: run as a script

LEVELS = (1, 64, 256, 512)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(patterns: dict[str, str]) -> dict[str, float]:
    """Per name: utime + stime of every process whose command line contains its pattern,
    and of all their descendants (workers started by spawn carry another command line).
    One pass over /proc for all names."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    roots: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        parent[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
        if "fullstack_bench" not in cmd:
            for name, pattern in patterns.items():
                if pattern in cmd:
                    roots[pid] = name
                    break
    total = dict.fromkeys(patterns, 0)
    for pid, t in ticks.items():
        p, seen = pid, 0
        while p > 1 and seen < 64:
            if p in roots:
                total[roots[p]] += t
                break
            p, seen = parent.get(p, 0), seen + 1
    return {name: t / CLK_TCK for name, t in total.items()}


# --- one client process ----------------------------------------------------------------------
async def _stream(
    client: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    window: tuple[float, float],
    out: dict[str, Any],
) -> None:
    start = time.time()
    ttft = 0.0
    chunks = 0
    done = False
    async with client.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            out["errors"][f"http_{resp.status}"] += 1
            await asyncio.sleep(0.05)
            return
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            if line.startswith(b"data: [DONE]"):
                done = True
                continue
            if b"completion_tokens" in line:
                continue
            # An error event is {"error": {...}} at the top; a generated token that reads
            # "error" (a random model streams any token) is a chunk like the others.
            if b'"error"' in line and "error" in json.loads(line[5:]):
                out["errors"]["sse_error"] += 1
                continue
            now = time.time()
            chunks += 1
            if not ttft:
                ttft = now - start
            if window[0] <= now < window[1]:
                out["chunks"] += 1
    end = time.time()
    if not done:
        out["errors"]["stream_cut"] += 1
    elif window[0] <= start and end <= window[1] and chunks:
        out["ttft"].append(ttft)
        out["tpot"].append((end - start - ttft) / max(chunks - 1, 1))
        out["requests"] += 1


async def _client_main(job: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"chunks": 0, "requests": 0, "ttft": [], "tpot": [], "errors": Counter()}
    ctx: ssl.SSLContext | bool = False
    if job["url"].startswith("https"):
        ctx = ssl.create_default_context(cafile=job["cacert"])
    url = job["url"].rstrip("/") + "/v1/completions"
    window = (job["t0"] + job["warmup"], job["t0"] + job["warmup"] + job["window"])
    rng = random.Random(job["seed"])

    async def loop(i: int, client: aiohttp.ClientSession) -> None:
        key = job["keys"][(job["first_stream"] + i) % len(job["keys"])] if job["keys"] else None
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        while time.time() < window[1]:
            prompt = [rng.randrange(100, job["vocab"]) for _ in range(job["input_len"])]
            body = json.dumps(
                {
                    "model": job["model"],
                    "prompt": prompt,
                    "max_tokens": job["output_len"],
                    "min_tokens": job["output_len"],
                    "ignore_eos": True,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ).encode()
            try:
                await _stream(client, url, body, headers, window, out)
            except (TimeoutError, aiohttp.ClientError) as exc:
                out["errors"][f"exc_{type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=0, ssl=ctx)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        await asyncio.sleep(max(0.0, job["t0"] - time.time()))
        tasks = [asyncio.ensure_future(loop(i, client)) for i in range(job["streams"])]
        # Streams still running after the window count nothing more: cut them.
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        await asyncio.wait(tasks, timeout=0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def _client_process(job: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_client_main(job))


# --- one (level, path) measurement -------------------------------------------------------------
def measure(
    pool: Any, args: argparse.Namespace, name: str, url: str, level: int, repeat: int
) -> dict[str, Any]:
    procs = min(level, args.procs)
    t0 = time.time() + 1.5  # every process connected and waiting by then
    jobs = []
    first = 0
    for p in range(procs):
        streams = level // procs + (1 if p < level % procs else 0)
        jobs.append(
            {
                "url": url,
                "cacert": args.cacert,
                "keys": args.api_key,
                "model": args.model,
                "vocab": args.vocab,
                "input_len": args.input_len,
                "output_len": args.output_len,
                "streams": streams,
                "first_stream": first,
                "t0": t0,
                "warmup": args.warmup,
                "window": args.window,
                "seed": hash((repeat, level, name, p)) & 0xFFFF,
            }
        )
        first += streams
    pending = pool.map_async(_client_process, jobs)
    cpu_names = dict(c.split("=", 1) for c in args.cpu)
    time.sleep(max(0.0, t0 + args.warmup - time.time()))
    before = cpu_seconds(cpu_names)
    time.sleep(max(0.0, t0 + args.warmup + args.window - time.time()))
    after = cpu_seconds(cpu_names)
    parts = pending.get(timeout=args.window + args.warmup + 120)
    chunks = sum(p["chunks"] for p in parts)
    ttft = [t for p in parts for t in p["ttft"]]
    tpot = [t for p in parts for t in p["tpot"]]
    errors = dict(sum((p["errors"] for p in parts), Counter()))
    cpu = {n: after[n] - before[n] for n in cpu_names}
    row = {
        "path": name,
        "concurrency": level,
        "repeat": repeat,
        "window_s": args.window,
        "chunks": chunks,
        "output_tokens_per_s": chunks / args.window,
        "requests": len(ttft),
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "tpot_p50_ms": percentile(tpot, 0.5) * 1000,
        "tpot_p99_ms": percentile(tpot, 0.99) * 1000,
        "errors": errors,
        "cpu_s": cpu,
        "cpu_us_per_chunk": {n: s / chunks * 1e6 if chunks else None for n, s in cpu.items()},
    }
    print(
        f"{args.label} r{repeat} c={level:4d} {name:6s} {row['output_tokens_per_s']:9.1f} tok/s "
        f"ttft p50 {row['ttft_p50_ms']:7.1f} ms errors {errors or '-'} "
        + " ".join(f"{n} {v:.0f}us" for n, v in row["cpu_us_per_chunk"].items() if v),
        file=sys.stderr,
        flush=True,
    )
    return row


def cmd_run(args: argparse.Namespace) -> None:
    paths = [tuple(p.split("=", 1)) for p in args.path]
    rows = []
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.procs) as pool:
        for repeat in range(args.repeats):
            for li, level in enumerate(args.levels):
                order = paths if (repeat + li) % 2 == 0 else paths[::-1]
                for name, url in order:
                    rows.append(measure(pool, args, name, url, level, repeat))
                    time.sleep(args.pause)
    result = {
        "kind": "fullstack",
        "label": args.label,
        "host": os.uname().nodename,
        "cores": os.cpu_count(),
        "args": {k: v for k, v in vars(args).items() if k not in ("api_key", "func")},
        "api_keys": len(args.api_key),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


# --- report -----------------------------------------------------------------------------------
def _med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def cmd_report(args: argparse.Namespace) -> None:
    for f in args.files:
        run = json.loads(Path(f).read_text())
        a = run["args"]
        raw_name, stack_name = a["path"][0].split("=")[0], a["path"][1].split("=")[0]
        print(
            f"\n### {run['label']}: {a['input_len']} prompt / {a['output_len']} output tokens, "
            f"{a['repeats']} repeats of {a['window']} s windows after {a['warmup']} s warm-up, "
            f"{run['api_keys']} API keys, {a['procs']} client processes\n"
        )
        print(
            "| concurrency | raw tok/s | stack tok/s | ratio median (min-max) "
            "| TTFT p50 raw / stack ms | TTFT p99 raw / stack ms | TPOT p50 raw / stack ms "
            "| TPOT p99 raw / stack ms | errors raw / stack | CPU us/chunk |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        for level in a["levels"]:
            by = {
                n: sorted(
                    (r for r in run["rows"] if r["path"] == n and r["concurrency"] == level),
                    key=lambda r: r["repeat"],
                )
                for n in (raw_name, stack_name)
            }
            raw, stack = by[raw_name], by[stack_name]
            ratios = [
                s["output_tokens_per_s"] / r["output_tokens_per_s"]
                for r, s in zip(raw, stack, strict=True)
                if r["output_tokens_per_s"]
            ]

            def m(rows: list[dict[str, Any]], key: str) -> float:
                return _med([r[key] for r in rows])

            def errs(rows: list[dict[str, Any]]) -> str:
                total: dict[str, int] = {}
                for r in rows:
                    for k, v in r["errors"].items():
                        total[k] = total.get(k, 0) + v
                return ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "0"

            cpu_names = stack[0]["cpu_us_per_chunk"].keys() if stack else []
            cpu = ", ".join(
                f"{n} {_med([r['cpu_us_per_chunk'][n] or float('nan') for r in stack]):.0f}"
                for n in cpu_names
            )
            print(
                f"| {level} | {m(raw, 'output_tokens_per_s'):,.0f} "
                f"| {m(stack, 'output_tokens_per_s'):,.0f} "
                f"| {_med(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}) "
                f"| {m(raw, 'ttft_p50_ms'):.1f} / {m(stack, 'ttft_p50_ms'):.1f} "
                f"({m(stack, 'ttft_p50_ms') - m(raw, 'ttft_p50_ms'):+.2f}) "
                f"| {m(raw, 'ttft_p99_ms'):.1f} / {m(stack, 'ttft_p99_ms'):.1f} "
                f"| {m(raw, 'tpot_p50_ms'):.2f} / {m(stack, 'tpot_p50_ms'):.2f} "
                f"| {m(raw, 'tpot_p99_ms'):.2f} / {m(stack, 'tpot_p99_ms'):.2f} "
                f"| {errs(raw)} / {errs(stack)} | {cpu} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure raw vs stack, interleaved and repeated")
    run.add_argument("--path", action="append", required=True, help="NAME=BASE_URL: raw first")
    run.add_argument("--api-key", action="append", default=[], help="repeat: streams take turns")
    run.add_argument("--cacert", default=None, help="CA file for https paths")
    run.add_argument("--model", default="phi-2")
    run.add_argument("--vocab", type=int, default=50000, help="prompt token ids below this")
    run.add_argument("--label", default="run")
    run.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--warmup", type=float, default=3.0)
    run.add_argument("--window", type=float, default=8.0)
    run.add_argument("--pause", type=float, default=1.0)
    run.add_argument("--procs", type=int, default=8, help="client processes")
    run.add_argument("--input-len", type=int, default=128)
    run.add_argument("--output-len", type=int, default=128)
    run.add_argument("--cpu", action="append", default=[], help="NAME=CMDLINE_SUBSTRING")
    run.add_argument("--out", required=True)
    rep = sub.add_parser("report", help="markdown tables from run files")
    rep.add_argument("files", nargs="+")
    args = p.parse_args()
    if len(getattr(args, "path", [None, None])) != 2:
        p.error("give exactly two --path: the raw engine first, then the stack")
    if args.cmd == "report":
        cmd_report(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
