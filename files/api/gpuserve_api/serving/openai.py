"""OpenAI serving: routes /v1 requests by ``model`` and relays the upstream's answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio

from ..config import GatewayConfig
from ..context import RequestInfo
from ..protocol import GatewayError
from ..upstream import (
    InvalidUpstreamRequest,
    UpstreamClient,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamTimeout,
)
from .common import (
    CHAT,
    COMPLETIONS,
    OTHER,
    RESPONSES,
    LengthFields,
    ProxyResult,
    Registry,
    effective_caps,
    note_usage,
    parse_json_object,
    prompt_chars,
    read_and_close,
    shown,
    upstream_error,
)

log = logging.getLogger("gpuserve.gateway")

_PASS_RESPONSE_HEADERS = ("content-type", "content-encoding", "cache-control")
# The routes that generate, by path (decoded, as vLLM will route it).
_GENERATING: dict[str, LengthFields] = {
    "/v1/completions": COMPLETIONS,
    "/v1/chat/completions": CHAT,
    "/v1/responses": RESPONSES,
}


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
        self, method: str, route: str, path: str, raw: bytes, info: RequestInfo, need_model: bool
    ) -> ProxyResult:
        """Validate, route by ``model`` and forward ``raw`` to ``path`` (rewritten only for
        aliases and for caps that apply to absent fields). ``route``: the decoded path."""
        if need_model and not raw:
            raise GatewayError(
                400, "request body is empty: a JSON object is required", code="invalid_json"
            )
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
            length = _GENERATING.get(route.rstrip("/"), OTHER)
            context = None
            if length.default is None and all(body.get(n) is None for n in length.names):
                context = await self.registry.context_len(canonical, info.request_id)
            added = effective_caps(body, self.config.limits, length, prompt_chars(body), context)
            if canonical != model or added:
                body.update(added, model=canonical)
                raw = json.dumps(body, separators=(",", ":")).encode()
            if self.log_prompts:
                info.extra["prompt"] = body.get("prompt", body.get("messages"))
        try:
            resp = await upstream.send(method, path, self._headers(info), raw or None)
        except UpstreamFailure as err:
            raise upstream_error(info, err) from None
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
            data = await read_and_close(resp)
        except UpstreamFailure as err:
            raise upstream_error(info, err) from None
        if ctype.startswith("application/json") and b'"usage"' in data:
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                note_usage(info, obj.get("usage"))
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
            timeout = isinstance(err, UpstreamTimeout)
            info.upstream_error = "timeout" if timeout else "broken_stream"
            # The same types and string codes as the non-stream 503/504 answers.
            msg = {
                "error": {
                    "message": f"upstream stream for model `{info.model}` failed: {err.kind}",
                    "type": "timeout_error" if timeout else "service_unavailable_error",
                    "param": None,
                    "code": "upstream_timeout" if timeout else "upstream_unavailable",
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
                note_usage(info, _usage_from_tail(tail))
            if texts is not None:
                info.extra["completion"] = _sse_texts(b"".join(texts))

    async def model(self, model_id: str, info: RequestInfo) -> dict[str, Any]:
        """One card of ``/v1/models`` (aliases included); 503 while the upstream that
        serves it is down (the model exists, it is just not available now)."""
        data, down = await self._cards(info)
        for card in data:
            if card.get("id") == model_id:
                return card
        canonical = self.registry.names.get(model_id)
        if canonical is not None and canonical in down:
            info.model = canonical
            info.upstream_error = "unavailable"
            raise GatewayError(
                503,
                f"upstream for model `{shown(model_id)}` is unavailable",
                "service_unavailable_error",
                "upstream_unavailable",
            )
        raise GatewayError(
            404,
            f"The model `{shown(model_id)}` does not exist.",
            code="model_not_found",
            param="model",
        )

    async def models(self, info: RequestInfo) -> dict[str, Any]:
        """``/v1/models`` merged over every upstream (aliases listed too)."""
        data, down = await self._cards(info)
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
        return {"object": "list", "data": data}

    async def _cards(self, info: RequestInfo) -> tuple[list[dict[str, Any]], list[str]]:
        """Every upstream's model cards plus alias cards, and the upstreams that did not
        answer."""

        async def one(name: str, up: UpstreamClient) -> list[dict[str, Any]] | None:
            try:
                resp = await up.send("GET", "/v1/models", self._headers(info), None)
                data = await read_and_close(resp)
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
        unique: dict[str, dict[str, Any]] = {}
        for card in data:  # an upstream may list an alias itself (--served-model-name a b)
            unique.setdefault(str(card.get("id")), card)
        return list(unique.values()), down


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
