"""Shared serving: the model registry, request caps, the result type and the upstream
helpers every endpoint's serving module uses.

Serving modules return plain results (``ProxyResult``, dicts), raise ``GatewayError``,
or hand back async iterators; they never build HTTP responses (``responses.py`` does).
They call the upstream layer and nothing above themselves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..config import GatewayConfig, Limits
from ..context import RequestInfo
from ..protocol import GatewayError
from ..upstream import UpstreamClient, UpstreamFailure, UpstreamResponse, UpstreamTimeout


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


def upstream_error(info: RequestInfo, err: UpstreamFailure) -> GatewayError:
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


def note_usage(info: RequestInfo, usage: Any) -> None:
    if isinstance(usage, dict):
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        info.prompt_tokens = pt if isinstance(pt, int) else None
        info.completion_tokens = ct if isinstance(ct, int) else None


async def read_and_close(resp: UpstreamResponse) -> bytes:
    """The whole body; the response is closed whatever happens, even on cancellation.

    Raises ``UpstreamFailure``: callers map it (``upstream_error``) or treat it as down.
    """
    try:
        return await resp.aread()
    finally:
        with anyio.CancelScope(shield=True):
            await resp.aclose()
