"""gpuserve-sim: a GPU-free emulator of vLLM's OpenAI-compatible server.

Same routes, SSE framing, ``usage``, error shape, ``/health`` and ``vllm:`` metric names
as vLLM, with configurable timing (time to first token, inter-token latency), a
``max_num_seqs`` batch with queueing beyond it, ``max_model_len`` rejection, a loading
period, failure injection and deterministic output per seed. It always says it is the
simulator: ``owned_by`` in /v1/models, the /health body, an ``X-Simulator`` header,
its logs and a ``gpuserve_sim_info`` metric.

Token counting: one token per whitespace-separated word of the prompt (chat: of every
message's text, plus 4 per message for the template); each generated token is one word.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("gpuserve.sim")

SIM_OWNER = "gpuserve-sim (simulator)"
ENV_PREFIX = "GPUSERVE_SIM_"

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "on",
    "as",
    "with",
    "by",
    "he",
    "at",
    "from",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "had",
    "not",
    "but",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "two",
    "her",
    "she",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "team",
    "american",
    "since",
    "first",
    "these",
    "while",
    "under",
    "high",
    "being",
    "well",
    "both",
    "north",
    "most",
    "part",
    "between",
    "new",
    "three",
    "film",
    "early",
    "year",
    "served",
    "city",
    "league",
    "line",
]

_DEFAULT_BUCKETS_TTFT = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_DEFAULT_BUCKETS_ITL = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
_DEFAULT_BUCKETS_E2E = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
)


@dataclass
class SimConfig:
    """Simulator settings; every field is also a CLI flag and a GPUSERVE_SIM_* env var."""

    host: str = "127.0.0.1"
    port: int = 8100
    uds: str | None = None
    model: str = "sim-model"
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    max_num_seqs: int = 256
    max_model_len: int = 4096
    startup_seconds: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    crash_after: int = 0
    seed: int = 0
    log_level: str = "info"
    # KV cache capacity in tokens, for vllm:kv_cache_usage_perc.
    kv_cache_tokens: int = field(default=0)

    def __post_init__(self) -> None:
        if self.kv_cache_tokens <= 0:
            self.kv_cache_tokens = self.max_num_seqs * self.max_model_len


class SimError(Exception):
    """An error vLLM would return, with vLLM's status and type."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param


def error_body(status: int, message: str, err_type: str, param: str | None = None) -> dict:
    """vLLM's error shape (recent versions): {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def _error(err: SimError) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, err.err_type, err.param),
        status_code=err.status,
        headers={"X-Simulator": "gpuserve-sim"},
    )


class SimMetrics:
    """vLLM's engine metrics, with vLLM's names and its ``model_name`` label."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["model_name", "engine"]
        lv = {"model_name": model, "engine": "0"}

        def series(kind: Any, name: str, doc: str, **extra: Any) -> Any:
            return kind(name, doc, labels, registry=r, **extra).labels(**lv)

        self.running = series(Gauge, "vllm:num_requests_running", "Requests in the model batch.")
        self.waiting = series(
            Gauge, "vllm:num_requests_waiting", "Requests waiting to be processed."
        )
        self.kv_usage = series(
            Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent."
        )
        self.prompt_tokens = series(
            Counter, "vllm:prompt_tokens", "Number of prefill tokens processed."
        )
        self.generation_tokens = series(
            Counter, "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.ttft = series(
            Histogram,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            buckets=_DEFAULT_BUCKETS_TTFT,
        )
        self.itl = series(
            Histogram,
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            buckets=_DEFAULT_BUCKETS_ITL,
        )
        self.e2e = series(
            Histogram,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            buckets=_DEFAULT_BUCKETS_E2E,
        )
        self.queue = series(
            Histogram,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            buckets=_DEFAULT_BUCKETS_E2E,
        )
        info = Gauge(
            "gpuserve_sim_info",
            "Always 1: this server is gpuserve-sim, a simulator.",
            ["model_name", "simulator"],
            registry=r,
        )
        info.labels(model_name=model, simulator="true").set(1)
        self.model = model


@dataclass
class _Job:
    """One sequence group (a request, possibly with n > 1 choices)."""

    prompt_tokens: int
    max_tokens: int
    rng_key: str
    n: int
    ignore_eos: bool
    stop: set[str]
    natural_len: list[int]


class SimEngine:
    """The fake engine: admission (max_num_seqs), timing, token generation, accounting."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.metrics = SimMetrics(cfg.model)
        self.started = time.monotonic()
        self.slots = asyncio.Semaphore(cfg.max_num_seqs)
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        self.requests_seen = 0
        self.fault_rng = random.Random(cfg.seed ^ 0x5EED)
        self.created = int(time.time())

    def loading(self) -> bool:
        return time.monotonic() - self.started < self.cfg.startup_seconds

    def _set_gauges(self) -> None:
        m = self.metrics
        m.running.set(self.running)
        m.waiting.set(self.waiting)
        m.kv_usage.set(min(1.0, self.kv_tokens / self.cfg.kv_cache_tokens))

    def admit_count(self) -> None:
        """Count a request for crash injection; crash the process when due."""
        self.requests_seen += 1
        if self.cfg.crash_after and self.requests_seen > self.cfg.crash_after:
            log.error(
                "gpuserve-sim: simulated crash after %d requests (failure injection)",
                self.cfg.crash_after,
            )
            logging.shutdown()
            os._exit(70)

    def roll_fault(self) -> str | None:
        if self.cfg.error_rate and self.fault_rng.random() < self.cfg.error_rate:
            return "error"
        if self.cfg.hang_rate and self.fault_rng.random() < self.cfg.hang_rate:
            return "hang"
        return None

    def word(self, key: str, choice: int, i: int) -> str:
        digest = hashlib.blake2b(f"{key}|{choice}|{i}".encode(), digest_size=4).digest()
        return _WORDS[int.from_bytes(digest, "little") % len(_WORDS)]

    async def run(self, job: _Job) -> AsyncIterator[list[tuple[str, str | None]]]:
        """Yield one step at a time: per choice, (token text, finish reason or None)."""
        cfg = self.cfg
        queued_at = time.monotonic()
        self.waiting += 1
        self._set_gauges()
        acquired = False
        try:
            await self.slots.acquire()
            acquired = True
        finally:
            self.waiting -= 1
            if not acquired:
                self._set_gauges()
        admitted = time.monotonic()
        self.metrics.queue.observe(admitted - queued_at)
        self.running += 1
        kv = job.prompt_tokens
        self.kv_tokens += kv
        self._set_gauges()
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        generated = 0
        reason = "abort"
        try:
            ttft = cfg.ttft_ms / 1000.0
            itl = cfg.itl_ms / 1000.0
            if ttft > 0:
                await asyncio.sleep(ttft)
            else:
                await asyncio.sleep(0)
            first = time.monotonic()
            self.metrics.ttft.observe(first - queued_at)
            done = [False] * job.n
            last = first
            step = 0
            while True:
                out: list[tuple[str, str | None]] = []
                for c in range(job.n):
                    if done[c]:
                        out.append(("", None))
                        continue
                    w = self.word(job.rng_key, c, step)
                    fin: str | None = None
                    if w in job.stop:
                        fin, w = "stop", ""
                    elif step + 1 >= job.max_tokens:
                        fin = "length"
                    elif not job.ignore_eos and step + 1 >= job.natural_len[c]:
                        fin = "stop"
                    if fin:
                        done[c] = True
                    out.append((" " + w if w else "", fin))
                    generated += 1 if w else 0
                self.metrics.generation_tokens.inc(sum(1 for t, _ in out if t))
                self.kv_tokens += job.n
                kv += job.n
                yield out
                step += 1
                if all(done):
                    reason = next((f for _, f in out if f), "stop") or "stop"
                    break
                # Absolute deadlines: no drift however late the consumer is.
                target = first + step * itl
                now = time.monotonic()
                if target > now:
                    await asyncio.sleep(target - now)
                else:
                    await asyncio.sleep(0)
                now = time.monotonic()
                self.metrics.itl.observe(now - last)
                last = now
        finally:
            self.running -= 1
            self.kv_tokens -= kv
            self.slots.release()
            self._set_gauges()
            self.metrics.e2e.observe(time.monotonic() - queued_at)
            self.metrics.success.labels(
                model_name=cfg.model, engine="0", finished_reason=reason
            ).inc()
            if reason == "abort":
                log.info("gpuserve-sim: request aborted after %d tokens", generated)


def _is_token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _count_tokens(text: str) -> int:
    return len(text.split())


def _chat_prompt(messages: Any) -> tuple[str, int]:
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages: must be a non-empty list", "BadRequestError", "messages")
    parts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise SimError(
                400, "messages: each message needs a string 'role'", "BadRequestError", "messages"
            )
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise SimError(
                400,
                "messages: content must be a string or a list of parts",
                "BadRequestError",
                "messages",
            )
        parts.append(f"{m['role']}: {content}")
    text = "\n".join(parts)
    return text, _count_tokens(text) + 4 * len(messages)


def _int_param(body: dict, name: str, default: int | None, lo: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SimError(400, f"{name}: must be an integer >= {lo}", "BadRequestError", name)
    return value


class SimServer:
    """HTTP handlers with vLLM's shapes."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.engine = SimEngine(cfg)

    # --- helpers ---------------------------------------------------------------
    def _hdrs(self, request_id: str) -> dict[str, str]:
        return {"X-Simulator": "gpuserve-sim", "X-Request-Id": request_id}

    async def _body(self, request: Request) -> dict:
        try:
            raw = await request.body()
        except ClientDisconnect:
            raise SimError(400, "client disconnected", "BadRequestError") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise SimError(
                400, "JSON decode error: request body is not valid JSON", "BadRequestError"
            ) from None
        if not isinstance(body, dict):
            raise SimError(400, "request body must be a JSON object", "BadRequestError")
        return body

    def _check_model(self, body: dict) -> str:
        model = body.get("model")
        if model is None:
            return self.cfg.model
        if model != self.cfg.model:
            raise SimError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return model

    def _job(self, body: dict, prompt: str, prompt_tokens: int, default_max: int | None) -> _Job:
        cfg = self.cfg
        max_tokens = _int_param(body, "max_completion_tokens", None, 1)
        if max_tokens is None:
            max_tokens = _int_param(body, "max_tokens", default_max, 1)
        n = _int_param(body, "n", 1, 1) or 1
        if n > 16:
            raise SimError(400, "n: must be <= 16 in the simulator", "BadRequestError", "n")
        seed = _int_param(body, "seed", None, -(2**63))
        if max_tokens is not None and prompt_tokens + max_tokens > cfg.max_model_len:
            raise SimError(
                400,
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion.",
                "BadRequestError",
            )
        if prompt_tokens >= cfg.max_model_len:
            raise SimError(
                400,
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of "
                "the input messages.",
                "BadRequestError",
            )
        if max_tokens is None:
            max_tokens = cfg.max_model_len - prompt_tokens
        stop = body.get("stop")
        items = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        stops = {x.strip() for x in items if isinstance(x, str) and x.strip()}
        ignore_eos = bool(body.get("ignore_eos", False))
        key = f"{cfg.seed}|{seed}|{prompt}"
        natural = []
        for c in range(n):
            d = hashlib.blake2b(f"{key}|len|{c}".encode(), digest_size=4).digest()
            natural.append(8 + int.from_bytes(d, "little") % 57)
        return _Job(prompt_tokens, max_tokens, key, n, ignore_eos, stops, natural)

    async def _gate(self, request: Request) -> str:
        """Loading period, failure injection; returns the request id."""
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        if self.engine.loading():
            raise SimError(
                503, "gpuserve-sim: model is still loading (simulated)", "ServiceUnavailableError"
            )
        self.engine.admit_count()
        fault = self.engine.roll_fault()
        if fault == "error":
            raise SimError(
                500,
                "gpuserve-sim: injected engine error (failure injection)",
                "InternalServerError",
            )
        if fault == "hang":
            log.warning("gpuserve-sim: request %s hangs (failure injection)", rid)
            await _wait_disconnect(request, 3600.0)
            raise SimError(500, "gpuserve-sim: injected hang ended", "InternalServerError")
        return rid

    # --- routes ------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.engine.loading():
            return JSONResponse(
                {"status": "loading", "simulator": "gpuserve-sim", "model": self.cfg.model},
                status_code=503,
                headers={"X-Simulator": "gpuserve-sim"},
            )
        return JSONResponse(
            {
                "status": "ok",
                "simulator": "gpuserve-sim",
                "model": self.cfg.model,
                "note": "this is a simulator, not a real vLLM engine",
            },
            headers={"X-Simulator": "gpuserve-sim"},
        )

    async def models(self, request: Request) -> Response:
        card = {
            "id": self.cfg.model,
            "object": "model",
            "created": self.engine.created,
            "owned_by": SIM_OWNER,
            "root": self.cfg.model,
            "parent": None,
            "max_model_len": self.cfg.max_model_len,
            "permission": [],
        }
        return JSONResponse(
            {"object": "list", "data": [card]}, headers={"X-Simulator": "gpuserve-sim"}
        )

    async def metrics(self, request: Request) -> Response:
        return Response(
            generate_latest(self.engine.metrics.registry),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        try:
            body = await self._body(request)
            model = self._check_model(body)
            if chat:
                prompt, ptoks = _chat_prompt(body.get("messages"))
            else:
                p = body.get("prompt")
                if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
                    p = p[0]
                if _is_token_ids(p):
                    # vLLM accepts token ids; one id is one token, as there.
                    prompt, ptoks = " ".join(str(t) for t in p), len(p)
                elif isinstance(p, str):
                    prompt, ptoks = p, max(1, _count_tokens(p))
                else:
                    raise SimError(
                        400,
                        "prompt: the simulator accepts one string or one list of token ids",
                        "BadRequestError",
                        "prompt",
                    )
            job = self._job(body, prompt, ptoks, None if chat else 16)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise SimError(400, "stream: must be a boolean", "BadRequestError", "stream")
            so = body.get("stream_options") or {}
            include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
            continuous = include_usage and bool(so.get("continuous_usage_stats"))
            rid = await self._gate(request)
        except SimError as err:
            return _error(err)
        prefix = "chatcmpl-" if chat else "cmpl-"
        ctx = _Ctx(
            id=prefix + rid,
            model=model,
            created=int(time.time()),
            chat=chat,
            echo=prompt if (not chat and body.get("echo")) else "",
            prompt_tokens=ptoks,
            include_usage=include_usage,
            continuous_usage=continuous,
        )
        if stream:
            return _SSEResponse(self._sse(job, ctx), self._hdrs(rid))
        task = asyncio.ensure_future(self._collect(job, ctx))
        ok = await _race_disconnect(request, task)
        if not ok:
            return Response(status_code=499)
        return JSONResponse(task.result(), headers=self._hdrs(rid))

    async def _collect(self, job: _Job, ctx: _Ctx) -> dict:
        texts = [""] * job.n
        reasons: list[str | None] = [None] * job.n
        completion = 0
        async for step in self.engine.run(job):
            for c, (tok, fin) in enumerate(step):
                if tok:
                    texts[c] += tok
                    completion += 1
                if fin:
                    reasons[c] = fin
        usage = {
            "prompt_tokens": ctx.prompt_tokens,
            "total_tokens": ctx.prompt_tokens + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None,
        }
        if ctx.chat:
            choices = [
                {
                    "index": c,
                    "message": {
                        "role": "assistant",
                        "content": texts[c],
                        "reasoning_content": None,
                        "tool_calls": [],
                    },
                    "logprobs": None,
                    "finish_reason": reasons[c],
                    "stop_reason": None,
                }
                for c in range(job.n)
            ]
            obj = "chat.completion"
        else:
            choices = [
                {
                    "index": c,
                    "text": ctx.echo + texts[c],
                    "logprobs": None,
                    "finish_reason": reasons[c],
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
                for c in range(job.n)
            ]
            obj = "text_completion"
        return {
            "id": ctx.id,
            "object": obj,
            "created": ctx.created,
            "model": ctx.model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": None,
        }

    async def _sse(self, job: _Job, ctx: _Ctx) -> AsyncIterator[bytes]:
        dumps = json.dumps
        if job.n == 1 and not ctx.continuous_usage:
            # The common case (one choice, no running usage): each event is this
            # request's prefix plus a per-token suffix encoded once per process.
            async for chunk in self._sse_one(job, ctx):
                yield chunk
            return
        head = (
            f'{{"id":"{ctx.id}","object":"'
            f'{"chat.completion.chunk" if ctx.chat else "text_completion"}",'
            f'"created":{ctx.created},"model":{dumps(ctx.model)},"choices":['
        )
        tail = "]" + (',"usage":null' if ctx.include_usage else "") + "}\n\n"
        completion = 0
        if ctx.chat:
            for c in range(job.n):
                yield (
                    f'data: {head}{{"index":{c},"delta":{{"role":"assistant",'
                    f'"content":""}},"logprobs":null,"finish_reason":null}}'
                    f"{tail}"
                ).encode()
        elif ctx.echo:
            for c in range(job.n):
                yield (
                    f'data: {head}{{"index":{c},"text":{dumps(ctx.echo)},'
                    f'"logprobs":null,"finish_reason":null,"stop_reason":null}}'
                    f"{tail}"
                ).encode()
        async for step in self.engine.run(job):
            out = []
            for c, (tok, fin) in enumerate(step):
                if not tok and not fin:
                    continue
                completion += 1 if tok else 0
                if ctx.continuous_usage:  # vLLM: usage so far on every chunk
                    tail = (
                        f'],"usage":{{"prompt_tokens":{ctx.prompt_tokens},"total_tokens":'
                        f'{ctx.prompt_tokens + completion},"completion_tokens":{completion}}}}}\n\n'
                    )
                fr = f'"{fin}"' if fin else "null"
                if ctx.chat:
                    out.append(
                        f'data: {head}{{"index":{c},"delta":{{"content":'
                        f'{dumps(tok)}}},"logprobs":null,"finish_reason":{fr}}}'
                        f"{tail}"
                    )
                else:
                    out.append(
                        f'data: {head}{{"index":{c},"text":{dumps(tok)},'
                        f'"logprobs":null,"finish_reason":{fr},'
                        f'"stop_reason":null}}{tail}'
                    )
            if out:
                yield "".join(out).encode()
        if ctx.include_usage:
            usage = {
                "prompt_tokens": ctx.prompt_tokens,
                "total_tokens": ctx.prompt_tokens + completion,
                "completion_tokens": completion,
            }
            yield f'data: {head}],"usage":{dumps(usage, separators=(",", ":"))}}}\n\n'.encode()
        yield b"data: [DONE]\n\n"

    async def _sse_one(self, job: _Job, ctx: _Ctx) -> AsyncIterator[bytes]:
        """``_sse`` for n = 1 without continuous usage, from pre-encoded parts: the same
        bytes, a fraction of the CPU (the simulator must cost less than what it tests)."""
        dumps = json.dumps
        head = (
            f'data: {{"id":"{ctx.id}","object":"'
            f'{"chat.completion.chunk" if ctx.chat else "text_completion"}",'
            f'"created":{ctx.created},"model":{dumps(ctx.model)},"choices":['
        ).encode()
        tail = ("]" + (',"usage":null' if ctx.include_usage else "") + "}\n\n").encode()
        parts = _CHAT_PARTS if ctx.chat else _TEXT_PARTS
        completion = 0
        if ctx.chat:
            yield (
                head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}' + tail
            )
        elif ctx.echo:
            yield (
                head
                + f'{{"index":0,"text":{dumps(ctx.echo)},'.encode()
                + b'"logprobs":null,"finish_reason":null,"stop_reason":null}'
                + tail
            )
        async for step in self.engine.run(job):
            tok, fin = step[0]
            if not tok and not fin:
                continue
            completion += 1 if tok else 0
            part = parts.get((tok, fin))
            if part is None:
                part = _encode_part(ctx.chat, tok, fin)
                if len(parts) < 4096:
                    parts[(tok, fin)] = part
            yield head + part + tail
        if ctx.include_usage:
            usage = {
                "prompt_tokens": ctx.prompt_tokens,
                "total_tokens": ctx.prompt_tokens + completion,
                "completion_tokens": completion,
            }
            yield head + b'],"usage":' + dumps(usage, separators=(",", ":")).encode() + b"}\n\n"
        yield b"data: [DONE]\n\n"

    async def not_found(self, request: Request) -> Response:
        # vLLM is a FastAPI app: unknown routes answer FastAPI's 404 body.
        return JSONResponse(
            {"detail": "Not Found"}, status_code=404, headers={"X-Simulator": "gpuserve-sim"}
        )


# (token text, finish reason) -> the event's choice part, encoded (see _sse_one).
_TEXT_PARTS: dict[tuple[str, str | None], bytes] = {}
_CHAT_PARTS: dict[tuple[str, str | None], bytes] = {}


def _encode_part(chat: bool, tok: str, fin: str | None) -> bytes:
    fr = f'"{fin}"' if fin else "null"
    if chat:
        text = (
            f'{{"index":0,"delta":{{"content":{json.dumps(tok)}}},"logprobs":null,'
            f'"finish_reason":{fr}}}'
        )
    else:
        text = (
            f'{{"index":0,"text":{json.dumps(tok)},"logprobs":null,"finish_reason":{fr},'
            f'"stop_reason":null}}'
        )
    return text.encode()


class _SSEResponse(Response):
    """A streamed response sent as its chunks come, stopped when the client goes away.

    What Starlette's StreamingResponse does, with one plain asyncio task watching for the
    disconnect instead of an anyio task group (a fraction of the CPU per request)."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    if task is not None:
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (asyncio.CancelledError, OSError):
            if not gone:
                raise
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
        finally:
            watcher.cancel()
            await self.chunks.aclose()  # type: ignore[attr-defined]


@dataclass
class _Ctx:
    id: str
    model: str
    created: int
    chat: bool
    echo: str
    prompt_tokens: int
    include_usage: bool
    continuous_usage: bool = False


async def _wait_disconnect(request: Request, limit: float) -> None:
    """Wait until the client goes away (or ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _race_disconnect(request: Request, task: asyncio.Future[Any]) -> bool:
    """Run ``task``; cancel it (vLLM aborts) if the client disconnects first."""
    watcher = asyncio.ensure_future(_wait_disconnect(request, 86400.0))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def create_sim_app(cfg: SimConfig) -> Starlette:
    server = SimServer(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        server.engine.started = time.monotonic()
        log.warning(
            "gpuserve-sim: SIMULATED vLLM server for model %r (not a real engine): ttft=%sms "
            "itl=%sms max_num_seqs=%d max_model_len=%d seed=%d",
            cfg.model,
            cfg.ttft_ms,
            cfg.itl_ms,
            cfg.max_num_seqs,
            cfg.max_model_len,
            cfg.seed,
        )
        yield

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/metrics", server.metrics, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/{path:path}", server.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = server
    return app


def _env_default(name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(
            f"gpuserve-sim: {ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None


def parse_args(argv: list[str] | None = None) -> SimConfig:
    defaults = SimConfig()
    p = argparse.ArgumentParser(
        prog="gpuserve-sim",
        description="GPU-free simulator of vLLM's OpenAI server (NOT a real engine). Every "
        f"flag can also be set as an env var {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}TTFT_MS).",
    )
    helps = {
        "host": "address to bind (default 127.0.0.1)",
        "port": "TCP port (default 8100)",
        "uds": "serve on this unix socket path instead of host:port",
        "model": "served model name (default sim-model)",
        "ttft_ms": "time to first token in ms (default 20)",
        "itl_ms": "inter-token latency in ms (default 5)",
        "max_num_seqs": "sequences generated at once; more requests queue (default 256)",
        "max_model_len": "context length; longer prompt+max_tokens is a 400 (default 4096)",
        "startup_seconds": "simulated model loading time: /health is 503 meanwhile (default 0)",
        "error_rate": "fraction of generation requests answered 500 (default 0)",
        "hang_rate": "fraction of generation requests that never answer (default 0)",
        "crash_after": "exit the process (code 70) on request N+1; 0 = never (default 0)",
        "seed": "seed for the generated text and the failure injection (default 0)",
        "log_level": "debug|info|warning|error (default info)",
        "kv_cache_tokens": "KV cache capacity in tokens (default max_num_seqs*max_model_len)",
    }
    for f in fields(SimConfig):
        kind = {"int": int, "float": float, "str": str}[
            str(f.type).split(" ")[0].replace("None", "").strip("| ") or "str"
        ]
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=_env_default(f.name, getattr(defaults, f.name), kind),
            help=helps.get(f.name),
        )
    ns = p.parse_args(argv)
    cfg = SimConfig(**vars(ns))
    for name in ("error_rate", "hang_rate"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    for name in ("max_num_seqs", "max_model_len"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("ttft_ms", "itl_ms", "startup_seconds", "crash_after"):
        if getattr(cfg, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return cfg


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    cfg = parse_args(argv)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    kwargs: dict[str, Any] = {"uds": cfg.uds} if cfg.uds else {"host": cfg.host, "port": cfg.port}
    uvicorn.run(
        create_sim_app(cfg),
        loop="auto",
        http="auto",
        log_level=cfg.log_level,
        access_log=False,
        timeout_keep_alive=75,
        **kwargs,
    )


if __name__ == "__main__":
    main()
