"""Response plumbing, in one place: serving results, errors and streams become HTTP.

Routers, the exception handlers (``main.py``) and the middleware answer through these.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .context import RequestInfo
from .protocol import GatewayError
from .serving.common import ProxyResult

T = TypeVar("T")


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: any string a client sent (a lone surrogate
    included) renders, so echoing client values can never fail the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class RelayResponse(Response):
    """Relay a byte stream chunk by chunk, unbuffered.

    Watches for the client's disconnect while streaming (also while the upstream is
    silent) and always closes the upstream when done, so vLLM aborts the request.
    """

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        status_code: int,
        headers: dict[str, str],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.stream = stream
        self.status_code = status_code
        self.close = close
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        try:
            async with _DisconnectGuard(receive):
                try:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": self.status_code,
                            "headers": self.raw_headers,
                        }
                    )
                    async for chunk in stream:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    pass  # the client went away: treated like a disconnect
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                if self.close is not None:
                    await self.close()


class _DisconnectGuard:
    """Cancel the current task's work inside ``async with`` when the client disconnects.

    One plain asyncio task reads ``receive`` meanwhile; the cancellation it causes is
    absorbed at the end of the block (``gone`` says it happened), any other propagates.
    Plain asyncio, not an anyio task group: this runs once or twice per request on the
    hot path, and the task group cost several times more (docs/performance.md).
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self.active = False
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if self.active and self.task is not None:
                    self.gone = True
                    self.task.cancel()
                return

    async def __aenter__(self) -> _DisconnectGuard:
        self.task = asyncio.current_task()
        self.active = True
        self.watcher = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: object, tb: object) -> bool:
        self.active = False
        if self.watcher is not None:
            self.watcher.cancel()
        if not self.gone or self.task is None:
            return False
        if kind is None:
            # The block ended before the cancellation reached it: take it here.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                kind = asyncio.CancelledError
        uncancel = getattr(self.task, "uncancel", None)  # Python >= 3.11
        others = uncancel() if uncancel is not None else 0
        # Swallow only the cancellation this guard caused.
        return kind is asyncio.CancelledError and others == 0


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it if the client disconnects first (vLLM then aborts).

    Raises ``ClientGone`` in that case. Streams watch for themselves (RelayResponse).
    """
    async with _DisconnectGuard(request.receive):
        return await work
    raise ClientGone


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) as it arrives."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError(
                    413,
                    f"request body is over this server's limit limits.max_body_bytes = {limit}",
                    code="body_over_limit",
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise GatewayError(400, "client disconnected while sending the body") from None
    return b"".join(chunks)


def json_response(data: Any, status: int = 200) -> Response:
    return SafeJSONResponse(data, status_code=status)


def to_response(result: ProxyResult | dict[str, Any]) -> Response:
    """A serving result as a response: a JSON object, a whole body, or a relayed stream."""
    if isinstance(result, dict):
        return json_response(result)
    if result.stream is not None:
        return RelayResponse(result.stream, result.status, result.headers, result.close)
    return Response(result.body, status_code=result.status, headers=result.headers)


def client_gone(info: RequestInfo) -> Response:
    """Nothing to answer: the client left (logged as 499, as nginx does)."""
    info.error = "client disconnected before the response"
    return Response(status_code=499)


def error_body(path: str, err: GatewayError) -> dict[str, Any]:
    """Triton's error shape on /v2, OpenAI's everywhere else."""
    return err.triton_body() if path.startswith("/v2") else err.openai_body()


def error_response(path: str, err: GatewayError) -> Response:
    return SafeJSONResponse(
        error_body(path, err), status_code=err.status, headers=err.headers or None
    )


async def relay(
    request: Request, info: RequestInfo, work: Awaitable[ProxyResult | dict[str, Any]]
) -> Response:
    """Await a serving call (cancelled if the client leaves first) and answer its result."""
    try:
        result = await cancel_on_disconnect(request, work)
    except ClientGone:
        return client_gone(info)
    return to_response(result)
