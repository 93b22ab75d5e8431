"""Serving: the OpenAI proxy and the Triton-to-OpenAI translation.

Classes here return plain results (``ProxyResult``), raise ``GatewayError``, or hand
back async generators; they never build HTTP responses (the routers do).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from .config import GatewayConfig, Limits
from .context import RequestInfo
from .protocol import GatewayError
from .upstream import (
    InvalidUpstreamRequest,
    UpstreamClient,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("gpuserve.gateway")

_PASS_RESPONSE_HEADERS = ("content-type", "content-encoding", "cache-control")


@dataclass
class ProxyResult:
    """What the router turns into a response: a whole body or a stream of bytes."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    # Closes the upstream response; the router calls it whatever happens to the stream.
    close: Callable[[], Awaitable[None]] | None = None


@dataclass
class Registry:
    """Model name (or alias) -> upstream client."""

    upstreams: dict[str, UpstreamClient]
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, config: GatewayConfig, clients: dict[str, UpstreamClient]) -> Registry:
        names = {}
        for up in config.upstreams:
            names[up.name] = up.name
            for alias in up.aliases:
                names[alias] = up.name
        return cls(clients, names)

    def resolve(self, model: str) -> tuple[str, UpstreamClient]:
        canonical = self.names.get(model)
        if canonical is None:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist. Available: {', '.join(sorted(self.names))}",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        return canonical, self.upstreams[canonical]


# --- request checks --------------------------------------------------------------
def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayError(400, f"`{name}` must be an integer", param=name, code="invalid_type")
    return value


def check_caps(body: Mapping[str, Any], limits: Limits, prompt_chars: int) -> None:
    """Refuse requests over the configured caps, naming the limit."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = _int_field(body, name)
        if value is not None and value > limits.max_tokens:
            raise GatewayError(
                400,
                f"`{name}` is {value}, over this server's limit limits.max_tokens = "
                f"{limits.max_tokens}",
                param=name,
                code="max_tokens_over_limit",
            )
    for name in ("n", "best_of"):
        value = _int_field(body, name)
        if value is not None and value > limits.max_n:
            raise GatewayError(
                400,
                f"`{name}` is {value}, over this server's limit limits.max_n = {limits.max_n}",
                param=name,
                code="n_over_limit",
            )
    if prompt_chars > limits.max_prompt_chars:
        raise GatewayError(
            413,
            f"the prompt has {prompt_chars} characters, over this server's limit "
            f"limits.max_prompt_chars = {limits.max_prompt_chars}",
            param="prompt",
            code="prompt_over_limit",
        )


def prompt_chars(body: Mapping[str, Any]) -> int:
    """Characters of prompt text (token-id prompts count one per token)."""
    total = 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += len(prompt)
    elif isinstance(prompt, list):
        for p in prompt:
            total += len(p) if isinstance(p, (str, list)) else 1
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += len(part["text"])
    text = body.get("input")
    if isinstance(text, str):
        total += len(text)
    elif isinstance(text, list):
        total += sum(len(t) if isinstance(t, (str, list)) else 1 for t in text)
    return total


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise GatewayError(
            400, f"request body is not valid JSON: {err}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    return body


def _upstream_error(info: RequestInfo, err: UpstreamFailure) -> GatewayError:
    info.upstream_error = err.kind
    if isinstance(err, UpstreamTimeout):
        return GatewayError(
            504, f"upstream for model `{info.model}` timed out", "timeout_error", "upstream_timeout"
        )
    return GatewayError(
        503,
        f"upstream for model `{info.model}` is unavailable",
        "service_unavailable_error",
        "upstream_unavailable",
    )


def _usage_from_tail(tail: deque[bytes]) -> dict[str, Any] | None:
    """Find the last SSE event carrying a non-null ``usage`` in the stream's tail."""
    data = b"".join(tail)
    for event in reversed(data.split(b"\n\n")):
        event = event.strip()
        if not event.startswith(b"data:") or b'"usage"' not in event:
            continue
        try:
            obj = json.loads(event[5:])
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            return obj["usage"]
    return None


def _note_usage(info: RequestInfo, usage: Any) -> None:
    if isinstance(usage, dict):
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        info.prompt_tokens = pt if isinstance(pt, int) else None
        info.completion_tokens = ct if isinstance(ct, int) else None


class OpenAIServing:
    """Routes OpenAI requests by ``model`` and relays the upstream's answer."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.log_prompts = config.logging.log_prompts

    def _headers(self, info: RequestInfo) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "accept-encoding": "identity",
            "x-request-id": info.request_id,
        }

    async def proxy(
        self, method: str, path: str, raw: bytes | None, info: RequestInfo, need_model: bool
    ) -> ProxyResult:
        """Validate, route by ``model`` and forward ``raw`` (rewritten only for aliases)."""
        body: dict[str, Any] | None = None
        if raw:
            body = parse_json_object(raw)
        model = body.get("model") if body is not None else None
        if model is None:
            if need_model or len(self.registry.upstreams) != 1:
                raise GatewayError(400, "`model` is required", param="model", code="missing_model")
            model = next(iter(self.registry.upstreams))
        if not isinstance(model, str):
            raise GatewayError(400, "`model` must be a string", param="model", code="invalid_type")
        canonical, upstream = self.registry.resolve(model)
        info.model = canonical
        if body is not None:
            check_caps(body, self.config.limits, prompt_chars(body))
            if canonical != model:
                body["model"] = canonical
                raw = json.dumps(body, separators=(",", ":")).encode()
            if self.log_prompts:
                info.extra["prompt"] = body.get("prompt", body.get("messages"))
        try:
            resp = await upstream.send(method, path, self._headers(info), raw)
        except UpstreamFailure as err:
            raise _upstream_error(info, err) from None
        except InvalidUpstreamRequest as err:
            raise GatewayError(400, f"invalid request path: {err}", code="invalid_path") from None
        return await self._relay(resp, info)

    async def _relay(self, resp: UpstreamResponse, info: RequestInfo) -> ProxyResult:
        headers = {k: v for k in _PASS_RESPONSE_HEADERS if (v := resp.headers.get(k))}
        if resp.status >= 500:
            info.upstream_error = f"status_{resp.status}"
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("text/event-stream") and resp.status < 400:
            headers["cache-control"] = "no-cache"
            headers["x-accel-buffering"] = "no"
            return ProxyResult(
                resp.status, headers, stream=self._stream(resp, info), close=resp.aclose
            )
        try:
            data = await resp.aread()
        except UpstreamFailure as err:
            raise _upstream_error(info, err) from None
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
        if ctype.startswith("application/json") and b'"usage"' in data:
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                _note_usage(info, obj.get("usage"))
                if self.log_prompts:
                    info.extra["completion"] = obj.get("choices")
        return ProxyResult(resp.status, headers, body=data)

    async def _stream(self, resp: UpstreamResponse, info: RequestInfo) -> AsyncIterator[bytes]:
        tail: deque[bytes] = deque(maxlen=3)
        chunks = 0
        texts: list[bytes] | None = [] if self.log_prompts else None
        try:
            async for chunk in resp.aiter_raw():
                chunks += chunk.count(b"data:")
                tail.append(chunk)
                if texts is not None:
                    texts.append(chunk)
                yield chunk
        except UpstreamFailure as err:
            info.upstream_error = (
                "broken_stream" if not isinstance(err, UpstreamTimeout) else ("timeout")
            )
            msg = {
                "error": {
                    "message": f"upstream stream for model `{info.model}` failed: {err.kind}",
                    "type": "service_unavailable_error",
                    "param": None,
                    "code": 503 if err.kind != "timeout" else 504,
                }
            }
            yield b"data: " + json.dumps(msg).encode() + b"\n\n"
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            last = b"".join(tail)
            if b"data: [DONE]" in last:
                chunks -= 1
            info.chunks = chunks
            if b'"usage":{' in last or b'"usage": {' in last:
                _note_usage(info, _usage_from_tail(tail))
            if texts is not None:
                info.extra["completion"] = _sse_texts(b"".join(texts))

    async def models(self, info: RequestInfo) -> dict[str, Any]:
        """``/v1/models`` merged over every upstream (aliases listed too)."""

        async def one(name: str, up: UpstreamClient) -> list[dict[str, Any]] | None:
            try:
                resp = await up.send("GET", "/v1/models", self._headers(info), None)
                try:
                    data = await resp.aread()
                finally:
                    await resp.aclose()
                if resp.status != 200:
                    return None
                cards = json.loads(data).get("data")
                return cards if isinstance(cards, list) else None
            except (UpstreamFailure, ValueError, AttributeError):
                return None

        names = list(self.registry.upstreams)
        results = await asyncio.gather(*(one(n, self.registry.upstreams[n]) for n in names))
        data: list[dict[str, Any]] = []
        down = []
        for name, cards in zip(names, results, strict=True):
            if cards is None:
                down.append(name)
                continue
            data.extend(c for c in cards if isinstance(c, dict))
            aliases = [a for a, c in self.registry.names.items() if c == name and a != name]
            base = next((c for c in cards if isinstance(c, dict) and c.get("id") == name), None)
            for alias in aliases:
                card = dict(base) if base else {"object": "model", "owned_by": "vllm"}
                card.update(id=alias, root=name)
                data.append(card)
        if down and not data:
            info.upstream_error = "unavailable"
            raise GatewayError(
                503,
                "no upstream answered /v1/models",
                "service_unavailable_error",
                "upstream_unavailable",
            )
        if down:
            log.warning(
                "upstreams missing from /v1/models: %s",
                ", ".join(down),
                extra={"fields": {"request_id": info.request_id}},
            )
        unique: dict[str, dict[str, Any]] = {}
        for card in data:  # an upstream may list an alias itself (--served-model-name a b)
            unique.setdefault(str(card.get("id")), card)
        return {"object": "list", "data": list(unique.values())}


def _sse_texts(data: bytes) -> str:
    out = []
    for event in data.split(b"\n\n"):
        event = event.strip()
        if not event.startswith(b"data: {"):
            continue
        try:
            obj = json.loads(event[6:])
        except ValueError:
            continue
        for choice in obj.get("choices") or []:
            out.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(out)


# --- Triton generate -> OpenAI completions ------------------------------------------
# Triton vLLM backend sampling parameter -> /v1/completions field (same name in vLLM).
TRITON_SAMPLING = (
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "length_penalty",
    "n",
    "best_of",
    "logprobs",
)
TRITON_CONTROL = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if isinstance(value, list) and len(value) == 1:
        return _flag(value[0], name)
    raise GatewayError(400, f"parameter `{name}` must be a boolean", param=name)


@dataclass
class TritonRequest:
    model: str
    version: str
    text_input: str
    sampling: dict[str, Any]
    exclude_input: bool
    return_finish_reason: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool


class TritonServing:
    """Triton's generate extension translated to ``/v1/completions``."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry

    def resolve(self, model: str, version: str | None, info: RequestInfo) -> UpstreamClient:
        if version not in (None, "", "1"):
            raise GatewayError(
                404,
                f"Request for unknown model: '{model}' version {version} "
                "is not found (only version 1 exists)",
                code="model_not_found",
            )
        try:
            canonical, upstream = self.registry.resolve(model)
        except GatewayError:
            raise GatewayError(
                404, f"Request for unknown model: '{model}' is not found", code="model_not_found"
            ) from None
        info.model = canonical
        return upstream

    def parse(self, model: str, version: str | None, raw: bytes, stream: bool) -> TritonRequest:
        body = parse_json_object(raw)
        text = body.pop("text_input", None)
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str):
            raise GatewayError(400, "`text_input` (a string) is required", param="text_input")
        params: dict[str, Any] = {}
        sp = body.pop("sampling_parameters", None)
        nested = body.pop("parameters", None)
        if nested is not None and not isinstance(nested, dict):
            raise GatewayError(400, "`parameters` must be an object", param="parameters")
        for source in (sp, nested):
            if isinstance(source, dict) and isinstance(source.get("sampling_parameters"), str):
                sp = source.pop("sampling_parameters")
        if isinstance(sp, str):
            try:
                sp = json.loads(sp)
            except ValueError:
                raise GatewayError(
                    400, "`sampling_parameters` is not valid JSON", param="sampling_parameters"
                ) from None
        if sp is not None and not isinstance(sp, dict):
            raise GatewayError(
                400, "`sampling_parameters` must be a JSON object", param="sampling_parameters"
            )
        for source in (sp or {}, nested or {}, body):
            params.update(source)
        sampling: dict[str, Any] = {}
        control: dict[str, Any] = {}
        for key, value in params.items():
            if key in TRITON_SAMPLING:
                sampling[key] = value
            elif key in TRITON_CONTROL:
                control[key] = value
            else:
                raise GatewayError(
                    400,
                    f"unsupported parameter `{key}`; supported: "
                    f"{', '.join(TRITON_SAMPLING + TRITON_CONTROL)}",
                    param=key,
                )
        for key in ("max_tokens", "min_tokens", "top_k", "seed", "n", "best_of"):
            if isinstance(sampling.get(key), float) and sampling[key].is_integer():
                sampling[key] = int(sampling[key])
        if isinstance(sampling.get("n"), int) and sampling["n"] != 1:
            raise GatewayError(400, "parameter `n` must be 1 on the generate endpoints", param="n")
        check_caps(sampling, self.config.limits, len(text))
        exclude = control.get("exclude_input_in_output")
        return TritonRequest(
            model=model,
            version=version or "1",
            text_input=text,
            sampling=sampling,
            # Triton's vLLM backend never prepends the prompt to streamed output.
            exclude_input=True if stream else (exclude is not None and _flag(exclude, "e")),
            return_finish_reason=_flag(
                control.get("return_finish_reason", False), "return_finish_reason"
            ),
            return_num_input_tokens=_flag(
                control.get("return_num_input_tokens", False), "return_num_input_tokens"
            ),
            return_num_output_tokens=_flag(
                control.get("return_num_output_tokens", False), "return_num_output_tokens"
            ),
        )

    def _upstream_body(self, req: TritonRequest, canonical: str, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": canonical, "prompt": req.text_input, **req.sampling}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return json.dumps(body, separators=(",", ":")).encode()

    def _out(self, req: TritonRequest, text: str) -> dict[str, Any]:
        return {"model_name": req.model, "model_version": req.version, "text_output": text}

    async def _open(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo, stream: bool
    ) -> UpstreamResponse:
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "x-request-id": info.request_id,
        }
        try:
            resp = await upstream.send(
                "POST", "/v1/completions", headers, self._upstream_body(req, info.model, stream)
            )
        except UpstreamFailure as err:
            raise _upstream_error(info, err) from None
        if resp.status != 200:
            try:
                data = await resp.aread()
            except UpstreamFailure as err:
                raise _upstream_error(info, err) from None
            finally:
                await resp.aclose()
            if resp.status >= 500:
                info.upstream_error = f"status_{resp.status}"
            try:
                message = json.loads(data)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = data.decode("utf-8", "replace")[:500] or f"upstream {resp.status}"
            status = (
                resp.status
                if resp.status in (400, 404, 413, 429, 503, 504)
                else (400 if resp.status < 500 else 502)
            )
            raise GatewayError(status, message)
        return resp

    async def generate(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo
    ) -> dict[str, Any]:
        resp = await self._open(upstream, req, info, stream=False)
        try:
            data = await resp.aread()
        except UpstreamFailure as err:
            raise _upstream_error(info, err) from None
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
        try:
            obj = json.loads(data)
            choice = obj["choices"][0]
            text = choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            info.upstream_error = "bad_response"
            raise GatewayError(502, "upstream answered an unexpected body") from None
        usage = obj.get("usage") or {}
        _note_usage(info, usage)
        out = self._out(req, text if req.exclude_input else req.text_input + text)
        if req.return_finish_reason:
            out["finish_reason"] = choice.get("finish_reason")
        if req.return_num_input_tokens:
            out["num_input_tokens"] = usage.get("prompt_tokens")
        if req.return_num_output_tokens:
            out["num_output_tokens"] = usage.get("completion_tokens")
        return out

    async def open_stream(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo
    ) -> ProxyResult:
        """Open the upstream stream (errors raise here); the events follow as a stream."""
        resp = await self._open(upstream, req, info, stream=True)
        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return ProxyResult(200, headers, stream=self._stream(resp, req, info), close=resp.aclose)

    async def _stream(
        self, resp: UpstreamResponse, req: TritonRequest, info: RequestInfo
    ) -> AsyncIterator[bytes]:
        buf = b""
        last_completion = 0
        sent = 0
        try:
            async for chunk in resp.aiter_raw():
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                out = []
                for event in events:
                    event = event.strip()
                    if not event.startswith(b"data: {"):
                        continue
                    obj = json.loads(event[6:])
                    if "error" in obj:
                        err = obj["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        out.append(b"data: " + json.dumps({"error": msg}).encode() + b"\n\n")
                        continue
                    usage = obj.get("usage")
                    if isinstance(usage, dict):
                        _note_usage(info, usage)
                    choices = obj.get("choices") or []
                    if not choices:
                        continue
                    choice = choices[0]
                    piece = self._out(req, choice.get("text") or "")
                    if req.return_finish_reason:
                        piece["finish_reason"] = choice.get("finish_reason")
                    if req.return_num_input_tokens:
                        piece["num_input_tokens"] = (usage or {}).get("prompt_tokens")
                    if req.return_num_output_tokens:
                        total = (usage or {}).get("completion_tokens")
                        if isinstance(total, int):
                            piece["num_output_tokens"] = total - last_completion
                            last_completion = total
                        else:
                            piece["num_output_tokens"] = 1 if piece["text_output"] else 0
                    out.append(b"data: " + json.dumps(piece).encode() + b"\n\n")
                    sent += 1
                if out:
                    yield b"".join(out)
        except UpstreamFailure as err:
            info.upstream_error = "broken_stream" if err.kind != "timeout" else "timeout"
            yield (
                b"data: "
                + json.dumps({"error": f"upstream stream failed: {err.kind}"}).encode()
                + b"\n\n"
            )
        except ValueError:
            info.upstream_error = "bad_response"
            yield b'data: {"error": "upstream sent an unreadable event"}\n\n'
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            info.chunks = sent


class ReadinessCache:
    """Upstream /health results, reused for ``readiness.cache_seconds``."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.ttl = config.readiness.cache_seconds
        self._cache: dict[str, tuple[float, bool, str]] = {}

    async def check(self, name: str) -> tuple[bool, str]:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        ok, detail = await self.registry.upstreams[name].health()
        self._cache[name] = (time.monotonic(), ok, detail)
        return ok, detail

    async def all(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        ups = self.config.upstreams
        results = await asyncio.gather(*(self.check(u.name) for u in ups))
        models = {
            u.name: {"ready": ok, "required": u.required, "detail": detail}
            for u, (ok, detail) in zip(ups, results, strict=True)
        }
        ready = all(ok for u, (ok, _) in zip(ups, results, strict=True) if u.required)
        return ready, models
