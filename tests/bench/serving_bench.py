"""GPU serving benchmark: raw vLLM vs the gateway (vs nginx in front) vs plain transformers.

One model, one GPU, fixed input/output lengths (EOS ignored), streamed completions.
  python tests/bench/serving_bench.py http --path raw=http://127.0.0.1:8000 \
      --path gateway=http://127.0.0.1:9000 --api-key KEY --model-dir /root/phi2 --out run.json
  python tests/bench/serving_bench.py transformers --model-dir /root/phi2 --out hf.json
  python tests/bench/serving_bench.py report run.json hf.json > table.md
Per path and concurrency: request throughput, output tokens/s, TTFT and TPOT p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

LEVELS = (1, 8, 32, 128)


@dataclass
class Sample:
    ttft: float
    latency: float
    output_tokens: int

    @property
    def tpot(self) -> float:
        return (self.latency - self.ttft) / max(self.output_tokens - 1, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def prompt_ids(model_dir: str, length: int, seed: int) -> list[int]:
    """`length` token ids drawn from the model's vocabulary (no special tokens)."""
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    rng = random.Random(seed)
    return [rng.randrange(100, min(vocab, 50000)) for _ in range(length)]


async def one_request(
    client: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> Sample:
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async with client.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and chunk["choices"][0].get("text") and not ttft:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return Sample(ttft=ttft, latency=time.perf_counter() - start, output_tokens=tokens)


async def run_level(
    base_url: str,
    model: str,
    ids: list[list[int]],
    output_len: int,
    concurrency: int,
    requests: int,
    headers: dict[str, str],
) -> dict[str, float]:
    url = f"{base_url}/v1/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    samples: list[Sample] = []

    async def worker(client: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": model,
                "prompt": ids[i % len(ids)],
                "max_tokens": output_len,
                "min_tokens": output_len,
                "ignore_eos": True,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            samples.append(await one_request(client, url, body, headers))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        # Warm the connections and the engine for this level, then measure.
        await asyncio.gather(
            *[worker_once(client, url, model, ids[0], headers) for _ in range(min(concurrency, 8))]
        )
        start = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - start
    out_tokens = sum(s.output_tokens for s in samples)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "wall_s": wall,
        "request_throughput": len(samples) / wall,
        "output_tokens_per_s": out_tokens / wall,
        "ttft_p50_ms": percentile([s.ttft for s in samples], 0.5) * 1000,
        "ttft_p99_ms": percentile([s.ttft for s in samples], 0.99) * 1000,
        "tpot_p50_ms": percentile([s.tpot for s in samples], 0.5) * 1000,
        "tpot_p99_ms": percentile([s.tpot for s in samples], 0.99) * 1000,
        "mean_output_tokens": out_tokens / max(len(samples), 1),
    }


async def worker_once(
    client: aiohttp.ClientSession, url: str, model: str, ids: list[int], headers: dict[str, str]
) -> None:
    body = {"model": model, "prompt": ids, "max_tokens": 4, "stream": True}
    await one_request(client, url, body, headers)


def cmd_http(args: argparse.Namespace) -> dict[str, Any]:
    paths = dict(p.split("=", 1) for p in args.path)
    ids = [prompt_ids(args.model_dir, args.input_len, seed) for seed in range(64)]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for level in args.levels:
        # Paths alternate per level, so drift over the run hits each path alike.
        for name, url in paths.items():
            requests = max(args.min_requests, level * args.rounds)
            row = asyncio.run(
                run_level(url, args.model, ids, args.output_len, level, requests, headers)
            )
            results[name].append(row)
            print(
                f"{name:8s} c={level:4d} {row['output_tokens_per_s']:9.1f} tok/s "
                f"ttft p50 {row['ttft_p50_ms']:7.1f} ms",
                file=sys.stderr,
                flush=True,
            )
    return {
        "kind": "http",
        "input_len": args.input_len,
        "output_len": args.output_len,
        "paths": results,
    }


def cmd_transformers(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float16).cuda().eval()
    rows = []
    for batch in args.batches:
        ids = torch.tensor(
            [prompt_ids(args.model_dir, args.input_len, seed) for seed in range(batch)],
            device="cuda",
        )
        kwargs = {
            "max_new_tokens": args.output_len,
            "min_new_tokens": args.output_len,
            "do_sample": False,
            "pad_token_id": 0,
        }
        try:
            with torch.inference_mode():
                model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
                torch.cuda.synchronize()
                wall = time.perf_counter() - start
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "oom": True})
            torch.cuda.empty_cache()
            continue
        new_tokens = (out.shape[1] - ids.shape[1]) * batch
        rows.append(
            {
                "batch": batch,
                "wall_s": wall,
                "output_tokens_per_s": new_tokens / wall,
                "new_tokens": new_tokens,
            }
        )
        print(f"transformers batch={batch:4d} {new_tokens / wall:9.1f} tok/s", file=sys.stderr)
    return {
        "kind": "transformers",
        "input_len": args.input_len,
        "output_len": args.output_len,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "batches": rows,
    }


def cmd_report(args: argparse.Namespace) -> None:
    runs = [json.loads(Path(p).read_text()) for p in args.files]
    http = next(r for r in runs if r["kind"] == "http")
    hf = next((r for r in runs if r["kind"] == "transformers"), None)
    print(f"Fixed {http['input_len']} input / {http['output_len']} output tokens, EOS ignored.\n")
    print(
        "| path | concurrency | req/s | output tok/s "
        "| TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in http["paths"].items():
        for r in rows:
            print(
                f"| {name} | {r['concurrency']} | {r['request_throughput']:.2f} | "
                f"{r['output_tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | "
                f"{r['ttft_p99_ms']:.1f} | "
                f"{r['tpot_p50_ms']:.2f} | {r['tpot_p99_ms']:.2f} |"
            )
    raw = {r["concurrency"]: r for r in http["paths"].get("raw", [])}
    print("\n| concurrency | path | tok/s vs raw | added TTFT p50 ms |")
    print("| ---: | --- | ---: | ---: |")
    for name, rows in http["paths"].items():
        if name == "raw":
            continue
        for r in rows:
            base = raw.get(r["concurrency"])
            if base:
                print(
                    f"| {r['concurrency']} | {name} | "
                    f"{r['output_tokens_per_s'] / base['output_tokens_per_s']:.3f}x | "
                    f"{r['ttft_p50_ms'] - base['ttft_p50_ms']:+.2f} |"
                )
    if hf:
        print("\n| transformers batch | output tok/s |")
        print("| ---: | ---: |")
        ok = [b for b in hf["batches"] if not b.get("oom")]
        for b in hf["batches"]:
            val = "OOM" if b.get("oom") else f"{b['output_tokens_per_s']:.1f}"
            print(f"| {b['batch']} | {val} |")
        gw = {r["concurrency"]: r for r in http["paths"].get("gateway", [])}
        hf_by_batch = {b["batch"]: b for b in ok}
        print("\n| comparison | vLLM via gateway tok/s | transformers tok/s | ratio |")
        print("| --- | ---: | ---: | ---: |")
        for level in (1, 128):
            if level in gw and level in hf_by_batch:
                a, b = gw[level]["output_tokens_per_s"], hf_by_batch[level]["output_tokens_per_s"]
                print(
                    f"| concurrency {level} vs batch {level} | {a:.0f} | {b:.1f} | {a / b:.1f}x |"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    http = sub.add_parser("http", help="benchmark OpenAI-compatible endpoints")
    http.add_argument("--path", action="append", required=True, help="NAME=BASE_URL (repeat)")
    http.add_argument("--model", default="phi-2")
    http.add_argument("--api-key", default="")
    http.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    http.add_argument("--rounds", type=int, default=4, help="requests per level = rounds x level")
    http.add_argument("--min-requests", type=int, default=16)
    hf = sub.add_parser("transformers", help="plain transformers generate() baseline")
    hf.add_argument("--batches", type=int, nargs="+", default=[1, 128, 256])
    for sp in (http, hf):
        sp.add_argument("--model-dir", required=True)
        sp.add_argument("--input-len", type=int, default=128)
        sp.add_argument("--output-len", type=int, default=128)
        sp.add_argument("--out", required=True)
    rep = sub.add_parser("report", help="markdown tables from result files")
    rep.add_argument("files", nargs="+")
    args = p.parse_args()
    if args.cmd == "report":
        cmd_report(args)
        return
    result = cmd_http(args) if args.cmd == "http" else cmd_transformers(args)
    result["args"] = {k: v for k, v in vars(args).items() if k != "api_key"}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
