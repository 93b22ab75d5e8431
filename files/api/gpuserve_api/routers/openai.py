"""OpenAI-compatible routes (/v1), relayed to the vLLM instance serving ``model``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..deps import GatewayState, Info, State
from ..protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, OpenAIError
from ..responses import json_response, read_body, relay
from ..route_labels import route_label
from . import body_schema, error_responses, refuse_other_methods

router = APIRouter(tags=["openai"])

_ERRORS = error_responses(
    OpenAIError,
    {
        400: "malformed JSON, bad field type, max_tokens/n over the cap",
        401: "missing or invalid API key",
        404: "unknown model",
        405: "method not allowed on this path (Allow lists the allowed ones)",
        413: "body or prompt over the cap",
        429: "too many requests in flight (Retry-After)",
        503: "upstream unavailable",
        504: "upstream timed out",
    },
)


async def _proxy(
    request: Request, state: GatewayState, info: Info, path: str, need_model: bool
) -> Response:
    raw = await read_body(request, state.config.limits.max_body_bytes)
    query = request.scope.get("query_string", b"").decode("latin-1")
    target = path + (f"?{query}" if query else "")
    route = request.url.path
    return await relay(
        request, info, state.openai.proxy(request.method, route, target, raw, info, need_model)
    )


@router.post(
    "/v1/completions",
    responses=_ERRORS,
    openapi_extra=body_schema(CompletionRequest),
    summary="Completions (OpenAI), streamed as SSE when stream=true",
)
@route_label("/v1/completions")
async def completions(request: Request, state: State, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/completions", need_model=True)


@router.post(
    "/v1/chat/completions",
    responses=_ERRORS,
    openapi_extra=body_schema(ChatCompletionRequest),
    summary="Chat completions (OpenAI), streamed as SSE when stream=true",
)
@route_label("/v1/chat/completions")
async def chat_completions(request: Request, state: State, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/chat/completions", need_model=True)


async def _fast_completions(request: Request, state: GatewayState, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/completions", need_model=True)


async def _fast_chat(request: Request, state: GatewayState, info: Info) -> Response:
    return await _proxy(request, state, info, "/v1/chat/completions", need_model=True)


# The generating routes as the middleware serves them directly (same handler, same
# labels; the routes above stay for the schema and any request the middleware passes on).
FAST_ROUTES = {
    "/v1/completions": ("/v1/completions", _fast_completions),
    "/v1/chat/completions": ("/v1/chat/completions", _fast_chat),
}


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=_ERRORS,
    summary="Models of every upstream, aliases included",
)
@route_label("/v1/models")
async def list_models(state: State, info: Info) -> Response:
    return json_response(await state.openai.models(info))


@router.get(
    "/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS, summary="One model"
)
@route_label("/v1/models")
async def get_model(model_id: str, state: State, info: Info) -> Response:
    return json_response(await state.openai.model(model_id, info))


@router.api_route(
    "/v1/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    responses=_ERRORS,
    summary="Any other vLLM /v1 route, routed by the body's `model`",
)
@route_label("/v1/*")
async def passthrough(rest: str, request: Request, state: State, info: Info) -> Response:
    refuse_other_methods(request, router.routes)
    # The path exactly as the client encoded it (percent-escapes kept).
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    return await _proxy(request, state, info, raw_path.decode("latin-1"), need_model=False)
