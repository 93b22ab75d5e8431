"""Shared serving: the model registry, request caps, the result type and the upstream
helpers every endpoint's serving module uses.

Serving modules return plain results (``ProxyResult``, dicts), raise ``GatewayError``,
or hand back async iterators; they never build HTTP responses (``responses.py`` does).
They call the upstream layer and nothing above themselves.
"""

from __future__ import annotations

import json
import re
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
    # Context window per model (vLLM's ``max_model_len`` in /v1/models), once known.
    contexts: dict[str, int] = field(default_factory=dict)

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
                f"The model `{shown(model)}` does not exist. "
                f"Available: {', '.join(sorted(self.names))}",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        return canonical, self.upstreams[canonical]

    async def context_len(self, name: str, request_id: str) -> int | None:
        """The model's context window from its upstream's /v1/models (asked once per
        worker, again only while the upstream did not answer; None when unknown)."""
        known = self.contexts.get(name)
        if known is not None:
            return known or None  # 0: the upstream answered without max_model_len
        headers = {"accept-encoding": "identity", "x-request-id": request_id}
        try:
            resp = await self.upstreams[name].send("GET", "/v1/models", headers, None)
            data = await read_and_close(resp)
            cards = json.loads(data).get("data") if resp.status == 200 else None
        except (UpstreamFailure, ValueError, AttributeError):
            return None
        for card in cards if isinstance(cards, list) else []:
            value = card.get("max_model_len") if isinstance(card, dict) else None
            if isinstance(value, int) and value > 0 and card.get("id") == name:
                self.contexts[name] = value
                return value
        self.contexts[name] = 0
        return None


# --- request checks --------------------------------------------------------------
@dataclass(frozen=True)
class LengthFields:
    """The fields that set how many tokens a route generates, and vLLM's value when the
    client leaves them all out (or sends null); None = the rest of the context window."""

    names: tuple[str, ...]
    default: int | None


# vLLM's protocol: CompletionRequest.max_tokens = 16; chat's max_completion_tokens
# (or the deprecated max_tokens) and the Responses API's max_output_tokens default to
# None, which vLLM turns into "the rest of the context window". Triton's vLLM backend
# builds SamplingParams, whose max_tokens default is 16.
COMPLETIONS = LengthFields(("max_tokens",), 16)
CHAT = LengthFields(("max_completion_tokens", "max_tokens"), None)
RESPONSES = LengthFields(("max_output_tokens",), None)
TRITON = LengthFields(("max_tokens",), 16)
# Any other route: fields that are present are checked, nothing is added.
OTHER = LengthFields(("max_tokens", "max_completion_tokens", "max_output_tokens"), 0)


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayError(400, f"`{name}` must be an integer", param=name, code="invalid_type")
    return value


def effective_caps(
    fields: Mapping[str, Any],
    limits: Limits,
    length: LengthFields,
    prompt_chars: int,
    context_len: int | None = None,
) -> dict[str, int]:
    """Check a generating request against the caps and return the fields to set on it.

    Every cap applies to the value vLLM will use, not only to fields the client sent:
    when all of ``length.names`` are absent or null, the result sets the first of them
    to what vLLM would use, capped (``min(default, limits.max_tokens)``, or the cap when
    vLLM's default is the rest of the context). Nothing is added when that default
    cannot exceed the cap anyway (``context_len`` known and <= the cap). ``n`` and
    ``best_of`` default to 1 in vLLM. Raises ``GatewayError`` naming the limit.
    """
    cap = limits.max_tokens
    present = False
    for name in dict.fromkeys(length.names + OTHER.names):
        value = _int_field(fields, name)
        if value is None:
            continue
        present = present or name in length.names
        if value > cap:
            raise GatewayError(
                400,
                f"`{name}` is {value}, over this server's limit limits.max_tokens = {cap}",
                param=name,
                code="max_tokens_over_limit",
            )
    for name in ("n", "best_of"):
        value = _int_field(fields, name)
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
    if present or length.default == 0:
        return {}
    if length.default is not None:
        return {length.names[0]: min(length.default, cap)}
    if context_len is not None and context_len <= cap:
        return {}
    return {length.names[0]: cap}


# Request fields whose text reaches the model (rendered into the prompt by vLLM's
# chat template or used as the prompt): every string in them counts, and in tool and
# function definitions the keys too (a JSON schema's property names are shown).
_PROMPT_FIELDS = ("prompt", "suffix", "messages", "input", "instructions")
_SCHEMA_FIELDS = ("tools", "functions")


def _chars(value: Any, keys: bool) -> int:
    """Characters of every string in ``value`` (token ids: one each), without recursion
    (the body's depth is bounded by ``parse_json_object``, the walk is iterative anyway)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if keys:
                total += sum(len(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            total += 1
    return total


def prompt_chars(body: Mapping[str, Any]) -> int:
    """Characters of all client text that reaches the model: prompts, every message's
    content, names, tool calls and their arguments, ``input`` items, instructions, and
    tool definitions (token-id prompts count one per token)."""
    total = sum(_chars(body[f], keys=False) for f in _PROMPT_FIELDS if f in body)
    return total + sum(_chars(body[f], keys=True) for f in _SCHEMA_FIELDS if f in body)


# --- strict JSON ----------------------------------------------------------------
# Deeper bodies are refused: vLLM's requests nest a few levels (messages, content
# parts, tool schemas); Python's own parser would raise RecursionError near 1,000.
MAX_JSON_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not JSON (only finite numbers are)")


def _check_tree(value: Any, text: bool) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings that are not valid Unicode
    (lone surrogates, which JSON's \\u escapes can spell), naming where."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise GatewayError(
                    400,
                    f"request body nests deeper than {MAX_JSON_DEPTH} levels (at {where or 'top'})",
                    code="invalid_json",
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for k, v in pairs:
                if text and isinstance(k, str):
                    _check_text(k, where)
                stack.append((v, depth + 1, f"{where}.{k}" if where else str(k)))
        elif text and isinstance(item, str):
            _check_text(item, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GatewayError(
            400,
            f"`{shown(where) or 'body'}` is not valid Unicode (a lone surrogate \\u escape)",
            param=shown(where) or None,
            code="invalid_unicode",
        ) from None


def loads_strict(raw: bytes | str) -> Any:
    """Parse JSON as vLLM's parser does: NaN/Infinity refused, nesting bounded, strings
    valid Unicode. Raises ``GatewayError`` (400, ``invalid_json``/``invalid_unicode``)."""
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise GatewayError(
            400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise GatewayError(
            400, f"request body is not valid JSON: {err}", code="invalid_json"
        ) from None
    if isinstance(data, (dict, list)):
        b = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        # Cheap pre-checks: the walk runs only when the text could need it.
        text = not isinstance(raw, bytes) or _SURROGATE_ESCAPE.search(b) is not None
        if text or b.count(b"[") + b.count(b"{") > MAX_JSON_DEPTH:
            _check_tree(data, text)
    return data


def parse_json_object(raw: bytes) -> dict[str, Any]:
    body = loads_strict(raw)
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    return body


def shown(value: object, limit: int = 200) -> str:
    """A client value as it may appear in an error message: shortened, and with
    anything that is not valid Unicode escaped (messages are UTF-8 JSON and log lines)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
