"""Cross-cutting request handling as one pure ASGI middleware (no body buffering).

Order: request id -> auth -> body size -> in-flight caps -> app; then metrics and
one structured log line. Streams count as in flight until their last byte.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyStore, bearer_token
from .config import GatewayConfig
from .context import RequestInfo
from .limits import InFlight
from .logs import ACCESS
from .metrics import GatewayMetrics
from .protocol import GatewayError
from .responses import error_response
from .route_labels import label_for

# A streaming route served straight from the middleware: (request, gateway state, info).
FastRoute = Callable[[Request, Any, RequestInfo], Awaitable[Response]]

log = logging.getLogger("gpuserve.gateway")
access_log = logging.getLogger(ACCESS)

_RID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_READY_V2 = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$")
_QUIET = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})


def is_open(path: str) -> bool:
    """Health, metrics and the API schema need no key."""
    return (
        not (path.startswith("/v1/") or path.startswith("/v2"))
        or path in ("/v2/health/live", "/v2/health/ready")
        or bool(_READY_V2.match(path))
    )


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        config: GatewayConfig,
        keys: KeyStore | None,
        limiter: InFlight,
        metrics: GatewayMetrics | None,
        routes: Sequence[BaseRoute],
        fast_routes: Mapping[str, tuple[str, FastRoute]] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        # POST path -> (route label, handler): the generating OpenAI routes skip FastAPI's
        # routing, dependency solving and exception-middleware wrappers (docs/performance.md).
        self.fast_routes = dict(fast_routes or {})
        self.config = config
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.max_body = config.limits.max_body_bytes
        self.retry_after = str(config.limits.retry_after_seconds)
        self.max_header_bytes = config.limits.max_header_bytes
        self.max_headers = config.limits.max_headers
        self.access = config.logging.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        rid = None
        auth_header = None
        length = None
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"x-request-id":
                rid = value.decode("latin-1")
            elif name == b"authorization":
                auth_header = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        if rid is None or not _RID.match(rid):
            rid = uuid.uuid4().hex
        fast = self.fast_routes.get(path) if scope["method"] == "POST" else None
        label = fast[0] if fast is not None else label_for(self.routes, scope)
        info = RequestInfo(request_id=rid, route=label)
        scope.setdefault("state", {})["gw_info"] = info
        rid_header = (b"x-request-id", rid.encode())
        first_byte: list[float] = []

        acquired: str | None = None

        def release() -> None:
            nonlocal acquired
            if acquired is not None:
                self.limiter.release(acquired)
                acquired = None
                if self.metrics:
                    self.metrics.in_flight.dec()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            else:
                if not first_byte and message.get("body"):
                    first_byte.append(time.perf_counter())
                if not message.get("more_body"):
                    # Free the slot before the last byte leaves: a client that starts its
                    # next request on the last chunk must find it free (no 429 at the cap).
                    release()
            await send(message)

        try:
            if len(scope["headers"]) > self.max_headers or header_bytes > self.max_header_bytes:
                raise GatewayError(
                    431,
                    f"request headers are {len(scope['headers'])} fields, {header_bytes} bytes; "
                    f"this server's limits: limits.max_headers = {self.max_headers}, "
                    f"limits.max_header_bytes = {self.max_header_bytes}",
                    code="headers_over_limit",
                )
            if not is_open(path):
                info.key = "anonymous"
                if self.keys is not None:
                    name = self.keys.lookup(bearer_token(auth_header) or "")
                    if name is None:
                        info.key = "invalid"
                        raise GatewayError(
                            401,
                            "Invalid or missing API key: send `Authorization: Bearer <key>`",
                            "authentication_error",
                            "invalid_api_key",
                        )
                    info.key = name
                if length is not None:
                    try:
                        size = int(length)
                    except ValueError:
                        raise GatewayError(400, "invalid Content-Length header") from None
                    if size > self.max_body:
                        raise GatewayError(
                            413,
                            f"request body is {size} bytes, over this server's limit "
                            f"limits.max_body_bytes = {self.max_body}",
                            code="body_over_limit",
                        )
                refused = self.limiter.try_acquire(info.key)
                if refused:
                    if self.metrics:
                        self.metrics.rejected.labels(reason=refused).inc()
                    raise GatewayError(
                        429,
                        f"too many requests in flight ({refused}); retry later",
                        "rate_limit_error",
                        "too_many_requests",
                        headers={"Retry-After": self.retry_after},
                    )
                acquired = info.key
                if self.metrics:
                    self.metrics.in_flight.inc()
            if fast is not None:
                request = Request(scope, receive)
                response = await fast[1](request, scope["app"].state.gw, info)
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except GatewayError as err:
            info.error = err.message
            await error_response(path, err)(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": rid, "path": path}})
            if not info.status:
                info.error = "internal error"
                err = GatewayError(500, f"internal error (request id {rid})", "internal_error")
                await error_response(path, err)(scope, receive, send_wrapper)
        finally:
            release()
            end = time.perf_counter()
            self._record(path, scope, info, start, end, first_byte[0] if first_byte else None)

    def _record(
        self,
        path: str,
        scope: Scope,
        info: RequestInfo,
        start: float,
        end: float,
        first: float | None,
    ) -> None:
        if self.metrics is not None and info.route != "/metrics":
            self.metrics.observe(info, start, end, first)
        if not self.access or (path in _QUIET and info.status < 400):
            return
        fields = info.access_fields(scope["method"], path, start, end, first)
        fields["client"] = (scope.get("client") or ("-",))[0]
        fields.update(info.extra)
        access_log.info("request", extra={"fields": fields})
