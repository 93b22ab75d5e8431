"""OpenAI-compatible routes (/v1), relayed to the vLLM instance serving ``model``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..context import RequestInfo
from ..deps import GatewayState, get_info, get_state
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GatewayError,
    ModelCard,
    ModelList,
    OpenAIError,
)
from ..responses import (
    ClientGone,
    RelayResponse,
    cancel_on_disconnect,
    json_response,
    read_body,
)
from ..serving import ProxyResult

router = APIRouter(tags=["openai"])

State = Annotated[GatewayState, Depends(get_state)]
Info = Annotated[RequestInfo, Depends(get_info)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": desc}
    for code, desc in {
        400: "malformed JSON, bad field type, max_tokens/n over the cap",
        401: "missing or invalid API key",
        404: "unknown model",
        413: "body or prompt over the cap",
        429: "too many requests in flight (Retry-After)",
        503: "upstream unavailable",
        504: "upstream timed out",
    }.items()
}


def _body_schema(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def client_gone(info: RequestInfo) -> Response:
    """Nothing to answer: the client left (logged as 499, as nginx does)."""
    info.error = "client disconnected before the response"
    return Response(status_code=499)


def to_response(result: ProxyResult) -> Response:
    if result.stream is not None:
        return RelayResponse(result.stream, result.status, result.headers, result.close)
    return Response(result.body, status_code=result.status, headers=result.headers)


async def _proxy(
    request: Request, state: GatewayState, info: RequestInfo, path: str, need_model: bool
) -> Response:
    raw = await read_body(request, state.config.limits.max_body_bytes)
    if need_model and not raw:
        raise GatewayError(
            400, "request body is empty: a JSON object is required", code="invalid_json"
        )
    query = request.scope.get("query_string", b"").decode("latin-1")
    work = state.openai.proxy(
        request.method, path + (f"?{query}" if query else ""), raw or None, info, need_model
    )
    try:
        result = await cancel_on_disconnect(request, work)
    except ClientGone:
        return client_gone(info)
    return to_response(result)


@router.post(
    "/v1/completions",
    responses=_ERRORS,
    openapi_extra=_body_schema(CompletionRequest),
    summary="Completions (OpenAI), streamed as SSE when stream=true",
)
async def completions(request: Request, state: State, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/completions", need_model=True)


@router.post(
    "/v1/chat/completions",
    responses=_ERRORS,
    openapi_extra=_body_schema(ChatCompletionRequest),
    summary="Chat completions (OpenAI), streamed as SSE when stream=true",
)
async def chat_completions(request: Request, state: State, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/chat/completions", need_model=True)


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=_ERRORS,
    summary="Models of every upstream, aliases included",
)
async def list_models(state: State, info: Info) -> Response:
    return json_response(await state.openai.models(info))


@router.get(
    "/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS, summary="One model"
)
async def get_model(model_id: str, state: State, info: Info) -> Response:
    listing = await state.openai.models(info)
    for card in listing["data"]:
        if card.get("id") == model_id:
            return json_response(card)
    raise GatewayError(
        404, f"The model `{model_id}` does not exist.", code="model_not_found", param="model"
    )


@router.api_route(
    "/v1/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    responses=_ERRORS,
    summary="Any other vLLM /v1 route, routed by the body's `model`",
)
async def passthrough(rest: str, request: Request, state: State, info: Info) -> Response:
    # The path exactly as the client encoded it (percent-escapes kept).
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    return await _proxy(request, state, info, raw_path.decode("latin-1"), need_model=False)
