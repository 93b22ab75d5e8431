"""Triton/KServe v2: generate extension and infer (translated to /v1/completions),
model config, repository index, metadata and health.

Health and readiness routes are status-code only (200 = true, 4xx = false), as in
KServe v2: /v2/health/ready and model ready answer 400 when not ready, 404 for an
unknown model.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..deps import GatewayState, Info, State
from ..protocol import (
    GatewayError,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RepositoryIndexEntry,
    ServerMetadata,
    TritonError,
    TritonGenerateRequest,
    TritonGenerateResponse,
)
from ..responses import json_response, read_body, relay
from ..route_labels import route_label
from ..serving.common import parse_json_object
from ..serving.kserve import HEADER_LENGTH, parse_infer_body
from . import body_schema, error_responses

router = APIRouter(tags=["triton"])

_ERRORS = error_responses(
    TritonError,
    {
        400: "bad request (JSON, parameters, caps)",
        401: "missing or invalid API key",
        404: "unknown model or version",
        413: "body or prompt over the cap",
        429: "too many requests in flight",
        503: "upstream unavailable",
        504: "upstream timed out",
    },
)
_BODY = body_schema(TritonGenerateRequest)
_INFER_BODY = body_schema(InferRequest)


@router.get("/v2", response_model=ServerMetadata, responses=_ERRORS, summary="Server metadata")
@route_label("/v2")
async def server_metadata(state: State) -> Response:
    return json_response(state.triton.server_metadata())


@router.get("/v2/health/live", summary="200 while the process runs")
@route_label("/v2/health")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="200 when every required model is ready, else 400")
@route_label("/v2/health")
async def ready(state: State) -> Response:
    ok, _ = await state.readiness.all()
    return Response(status_code=200 if ok else 400)


async def _model_ready(state: GatewayState, model: str, version: str | None) -> Response:
    name = state.triton.known(model, version)
    if name is None:
        return Response(status_code=404)
    ok, _ = await state.readiness.check(name)
    return Response(status_code=200 if ok else 400)


@router.get("/v2/models/{model}/ready", summary="200 ready, 400 not ready, 404 unknown")
@route_label("/v2/models/ready")
async def model_ready(model: str, state: State) -> Response:
    return await _model_ready(state, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready", summary="Model version ready")
@route_label("/v2/models/ready")
async def model_version_ready(model: str, version: str, state: State) -> Response:
    return await _model_ready(state, model, version)


@router.get(
    "/v2/models/{model}", response_model=ModelMetadata, responses=_ERRORS, summary="Model metadata"
)
@route_label("/v2/models")
async def model_metadata(model: str, state: State) -> Response:
    return json_response(state.triton.metadata(model, None))


@router.get(
    "/v2/models/{model}/versions/{version}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    summary="Model version metadata",
)
@route_label("/v2/models")
async def model_version_metadata(model: str, version: str, state: State) -> Response:
    return json_response(state.triton.metadata(model, version))


async def _generate(
    request: Request,
    state: GatewayState,
    info: Info,
    model: str,
    version: str | None,
    stream: bool,
) -> Response:
    upstream = state.triton.resolve(model, version, info)
    raw = await read_body(request, state.config.limits.max_body_bytes)
    req = state.triton.parse(model, version, raw, stream)
    if stream:
        return await relay(request, info, state.triton.open_stream(upstream, req, info))
    return await relay(request, info, state.triton.generate(upstream, req, info))


@router.post(
    "/v2/models/{model}/generate",
    response_model=TritonGenerateResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate",
)
@route_label("/v2/generate")
async def generate(model: str, request: Request, state: State, info: Info) -> Response:
    return await _generate(request, state, info, model, None, stream=False)


@router.post(
    "/v2/models/{model}/versions/{version}/generate",
    response_model=TritonGenerateResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate (versioned)",
)
@route_label("/v2/generate")
async def generate_version(
    model: str, version: str, request: Request, state: State, info: Info
) -> Response:
    return await _generate(request, state, info, model, version, stream=False)


@router.post(
    "/v2/models/{model}/generate_stream",
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate_stream (SSE)",
)
@route_label("/v2/generate_stream")
async def generate_stream(model: str, request: Request, state: State, info: Info) -> Response:
    return await _generate(request, state, info, model, None, stream=True)


@router.post(
    "/v2/models/{model}/versions/{version}/generate_stream",
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate_stream (versioned, SSE)",
)
@route_label("/v2/generate_stream")
async def generate_stream_version(
    model: str, version: str, request: Request, state: State, info: Info
) -> Response:
    return await _generate(request, state, info, model, version, stream=True)


# --- KServe v2 infer, model configuration, repository index ------------------------
async def _infer(
    request: Request, state: GatewayState, info: Info, model: str, version: str | None
) -> Response:
    upstream = state.triton.resolve(model, version, info)
    raw = await read_body(request, state.config.limits.max_body_bytes)
    call = parse_infer_body(raw, request.headers.get(HEADER_LENGTH))
    req, _ = state.triton.from_infer(model, version, call)
    return await relay(request, info, state.triton.infer(upstream, req, call, info))


@router.post(
    "/v2/models/{model}/infer",
    response_model=InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    summary="KServe v2 infer (JSON or binary tensors)",
)
@route_label("/v2/infer")
async def infer(model: str, request: Request, state: State, info: Info) -> Response:
    return await _infer(request, state, info, model, None)


@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    response_model=InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    summary="KServe v2 infer (versioned)",
)
@route_label("/v2/infer")
async def infer_version(
    model: str, version: str, request: Request, state: State, info: Info
) -> Response:
    return await _infer(request, state, info, model, version)


@router.get("/v2/models/{model}/config", responses=_ERRORS, summary="Triton model configuration")
@route_label("/v2/models/config")
async def model_config(model: str, state: State) -> Response:
    return json_response(state.triton.model_config(model, None))


@router.get(
    "/v2/models/{model}/versions/{version}/config",
    responses=_ERRORS,
    summary="Triton model configuration (versioned)",
)
@route_label("/v2/models/config")
async def model_version_config(model: str, version: str, state: State) -> Response:
    return json_response(state.triton.model_config(model, version))


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryIndexEntry],
    responses=_ERRORS,
    summary="Triton repository index: every configured model and its state",
)
@route_label("/v2/repository")
async def repository_index(request: Request, state: State) -> Response:
    raw = await read_body(request, state.config.limits.max_body_bytes)
    body = parse_json_object(raw) if raw.strip() else {}
    ready_only = body.get("ready")
    if ready_only is not None and not isinstance(ready_only, bool):
        raise GatewayError(400, "`ready` must be a boolean", param="ready")
    return json_response(await state.triton.repository_index(state.readiness, bool(ready_only)))
