"""Application factory: ``create_app(config)`` builds the gateway; resources live in
the lifespan (one pooled upstream client per model, per worker)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from . import __version__
from .auth import KeyStore, load_keys
from .config import GatewayConfig, Upstream, load_config
from .deps import GatewayState
from .limits import ENV_FILE, InFlight, key_names
from .listener import exit_with_supervisor
from .logs import setup_logging
from .metrics import GatewayMetrics
from .middleware import GatewayMiddleware, is_open
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GatewayError,
    InferRequest,
    TritonGenerateRequest,
)
from .responses import error_response
from .routers import health, metrics, openai, triton
from .serving.common import Registry
from .serving.openai import OpenAIServing
from .serving.readiness import ReadinessCache
from .serving.triton import TritonServing
from .upstream import UpstreamClient
from .upstream_native import NativeUpstream

log = logging.getLogger("gpuserve.gateway")

UpstreamFactory = Callable[[Upstream], UpstreamClient]


def default_upstream_factory(config: Upstream) -> UpstreamClient:
    return NativeUpstream(config)


def _error_response(request: Request, err: GatewayError) -> Response:
    info = getattr(request.state, "gw_info", None)
    if info is not None:
        info.error = err.message
    return error_response(request.url.path, err)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, err: GatewayError) -> Response:
        return _error_response(request, err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request"
        return _error_response(request, GatewayError(400, msg, param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        message = {404: "Not Found", 405: "Method Not Allowed"}.get(
            err.status_code, str(err.detail)
        )
        # Keeps Starlette's headers: a 405 carries ``Allow``.
        return _error_response(
            request,
            GatewayError(
                err.status_code, message, "invalid_request_error", headers=dict(err.headers or {})
            ),
        )


# Routes that answer with a status code only (KServe v2 health), or plain text.
_STATUS_ONLY = {
    "/v2/health/live": {"200": "live"},
    "/v2/health/ready": {"200": "every required model is ready", "400": "not ready"},
    "/v2/models/{model}/ready": {"200": "ready", "400": "not ready", "404": "unknown model"},
    "/v2/models/{model}/versions/{version}/ready": {
        "200": "ready",
        "400": "not ready",
        "404": "unknown model or version",
    },
}
_TEXT = {"/metrics": {"200": "Prometheus text format", "404": "metrics are disabled"}}


def _describe_reality(schema: dict[str, Any], auth: bool) -> None:
    """Make the generated schema say what the gateway really answers: validation errors
    are 400 in the route's error shape (never FastAPI's 422), health routes have no body,
    /metrics is text, the /v1 catch-all relays whatever vLLM answers, and (auth on) the
    routes that need a key say so."""
    comps = schema["components"]["schemas"]
    if auth:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in schema["paths"].items():
        shape = "TritonError" if path.startswith("/v2") else "OpenAIError"
        for op in ops.values():
            if auth and not is_open(path):
                op["security"] = [{"bearer": []}]
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": "invalid parameter",
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}
                    },
                }
            if path in _STATUS_ONLY:
                op["responses"] = {c: {"description": d} for c, d in _STATUS_ONLY[path].items()}
            elif path in _TEXT:
                op["responses"] = {
                    c: {"description": d, "content": {"text/plain": {"schema": {"type": "string"}}}}
                    for c, d in _TEXT[path].items()
                }
            elif path == "/v1/{rest}":
                # vLLM's own answer, relayed unchanged (its errors may be FastAPI's
                # {"detail": ...}); the gateway's own errors keep their documented shape.
                for code in ("200", "400", "404"):
                    responses.pop(code, None)
                responses["default"] = {
                    "description": "the upstream's answer, relayed unchanged",
                    "content": {"application/json": {"schema": {}}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)


def _openapi(app: FastAPI, auth: bool) -> Callable[[], dict[str, Any]]:
    """The generated schema plus the request bodies the hot path parses by hand."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        parsed = (CompletionRequest, ChatCompletionRequest, TritonGenerateRequest, InferRequest)
        for model in parsed:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
        _describe_reality(schema, auth)
        app.openapi_schema = schema
        return schema

    return build


def create_app(
    config: GatewayConfig,
    upstream_factory: UpstreamFactory = default_upstream_factory,
    keys: KeyStore | None = None,
) -> FastAPI:
    """Build the gateway app. Raises ConfigError when the keys file is unusable."""
    if config.auth.enabled and keys is None:
        assert config.auth.keys_file is not None  # guaranteed by the config schema
        keys = load_keys(config.auth.keys_file)
    if not config.auth.enabled:
        keys = None
    metrics_obj = GatewayMetrics() if config.metrics.enabled else None
    # Counters shared by the workers when `serve` started several (limits.py).
    limiter = InFlight(config.limits, key_names(keys), path=os.environ.get(ENV_FILE))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter.open()
        clients = {up.name: upstream_factory(up) for up in config.upstreams}
        registry = Registry.build(config, clients)
        state = GatewayState(
            config=config,
            registry=registry,
            openai=OpenAIServing(config, registry),
            triton=TritonServing(config, registry),
            readiness=ReadinessCache(config, registry),
            metrics=metrics_obj,
        )
        app.state.gw = state
        grpc_server = None
        if config.grpc.enabled:
            # Imported here: grpcio loads only where the gRPC endpoint is on.
            from .grpc.service import start_server

            grpc_server = await start_server(state, keys, limiter, metrics_obj)
        log.info(
            "gateway started",
            extra={
                "fields": {
                    "upstreams": [u.name for u in config.upstreams],
                    "auth": config.auth.enabled,
                    "grpc": f"{config.grpc.host}:{config.grpc.port}"
                    if config.grpc.enabled
                    else None,
                    "version": __version__,
                }
            },
        )
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(config.listen.graceful_shutdown_seconds)
            for client in clients.values():
                await client.aclose()
            limiter.close()

    app = FastAPI(
        title="gpuserve gateway",
        version=__version__,
        description="OpenAI-compatible and Triton (KServe v2 HTTP, gRPC) API in front of vLLM.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_error_handlers(app)
    routers = (health.router, metrics.router, openai.router, triton.router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        GatewayMiddleware,
        config=config,
        keys=keys,
        limiter=limiter,
        metrics=metrics_obj,
        # The declared routes, in the app's order: the middleware labels by them.
        routes=[route for router in routers for route in router.routes],
        fast_routes=openai.FAST_ROUTES,
    )
    app.openapi = _openapi(app, keys is not None)  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: config from $GPUSERVE_API_CONFIG."""
    exit_with_supervisor()
    config = load_config()
    setup_logging(config.logging)
    return create_app(config)
