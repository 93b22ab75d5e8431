"""Triton/KServe v2: generate extension (translated to /v1/completions) and health.

Health and readiness routes are status-code only (200 = true, 4xx = false), as in
KServe v2: /v2/health/ready and model ready answer 400 when not ready, 404 for an
unknown model.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .. import __version__
from ..context import RequestInfo
from ..deps import GatewayState, get_info, get_state
from ..protocol import (
    GatewayError,
    ModelMetadata,
    ServerMetadata,
    TritonError,
    TritonGenerateRequest,
    TritonGenerateResponse,
)
from ..responses import ClientGone, cancel_on_disconnect, json_response, read_body
from .openai import client_gone, to_response

router = APIRouter(tags=["triton"])

State = Annotated[GatewayState, Depends(get_state)]
Info = Annotated[RequestInfo, Depends(get_info)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": TritonError, "description": desc}
    for code, desc in {
        400: "bad request (JSON, parameters, caps)",
        401: "missing or invalid API key",
        404: "unknown model or version",
        413: "body or prompt over the cap",
        429: "too many requests in flight",
        503: "upstream unavailable",
        504: "upstream timed out",
    }.items()
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TritonGenerateRequest"}}
        },
    }
}
_ = TritonGenerateRequest  # the schema above is registered from this model


@router.get("/v2", response_model=ServerMetadata, responses=_ERRORS, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response(
        {
            "name": "gpuserve-gateway",
            "version": __version__,
            "extensions": ["generate", "generate_stream"],
        }
    )


@router.get("/v2/health/live", summary="200 while the process runs")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="200 when every required model is ready, else 400")
async def ready(state: State) -> Response:
    ok, _ = await state.readiness.all()
    return Response(status_code=200 if ok else 400)


async def _model_ready(state: GatewayState, model: str, version: str | None) -> Response:
    name = state.registry.names.get(model)
    if name is None or version not in (None, "1"):
        return Response(status_code=404)
    ok, _ = await state.readiness.check(name)
    return Response(status_code=200 if ok else 400)


@router.get("/v2/models/{model}/ready", summary="200 ready, 400 not ready, 404 unknown")
async def model_ready(model: str, state: State) -> Response:
    return await _model_ready(state, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready", summary="Model version ready")
async def model_version_ready(model: str, version: str, state: State) -> Response:
    return await _model_ready(state, model, version)


def _metadata(state: GatewayState, model: str, version: str | None) -> dict[str, Any]:
    if state.registry.names.get(model) is None or version not in (None, "1"):
        raise GatewayError(404, f"Request for unknown model: '{model}' is not found")
    scalar = [1]
    return {
        "name": model,
        "versions": ["1"],
        "platform": "vllm",
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": scalar},
            {"name": "stream", "datatype": "BOOL", "shape": scalar},
            {"name": "sampling_parameters", "datatype": "BYTES", "shape": scalar},
            {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": scalar},
            {"name": "return_finish_reason", "datatype": "BOOL", "shape": scalar},
            {"name": "return_num_input_tokens", "datatype": "BOOL", "shape": scalar},
            {"name": "return_num_output_tokens", "datatype": "BOOL", "shape": scalar},
        ],
        "outputs": [
            {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
            {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
            {"name": "num_input_tokens", "datatype": "UINT32", "shape": [1]},
            {"name": "num_output_tokens", "datatype": "UINT32", "shape": [-1]},
        ],
    }


@router.get(
    "/v2/models/{model}", response_model=ModelMetadata, responses=_ERRORS, summary="Model metadata"
)
async def model_metadata(model: str, state: State) -> Response:
    return json_response(_metadata(state, model, None))


@router.get(
    "/v2/models/{model}/versions/{version}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    summary="Model version metadata",
)
async def model_version_metadata(model: str, version: str, state: State) -> Response:
    return json_response(_metadata(state, model, version))


async def _generate(
    request: Request,
    state: GatewayState,
    info: RequestInfo,
    model: str,
    version: str | None,
    stream: bool,
) -> Response:
    upstream = state.triton.resolve(model, version, info)
    raw = await read_body(request, state.config.limits.max_body_bytes)
    req = state.triton.parse(model, version, raw, stream)
    try:
        if stream:
            opened = await cancel_on_disconnect(
                request, state.triton.open_stream(upstream, req, info)
            )
            return to_response(opened)
        out = await cancel_on_disconnect(request, state.triton.generate(upstream, req, info))
    except ClientGone:
        return client_gone(info)
    return json_response(out)


@router.post(
    "/v2/models/{model}/generate",
    response_model=TritonGenerateResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate",
)
async def generate(model: str, request: Request, state: State, info: Info) -> Response:
    return await _generate(request, state, info, model, None, stream=False)


@router.post(
    "/v2/models/{model}/versions/{version}/generate",
    response_model=TritonGenerateResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate (versioned)",
)
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
async def generate_stream(model: str, request: Request, state: State, info: Info) -> Response:
    return await _generate(request, state, info, model, None, stream=True)


@router.post(
    "/v2/models/{model}/versions/{version}/generate_stream",
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Triton generate_stream (versioned, SSE)",
)
async def generate_stream_version(
    model: str, version: str, request: Request, state: State, info: Info
) -> Response:
    return await _generate(request, state, info, model, version, stream=True)
