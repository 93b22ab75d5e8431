"""Gateway health: /health (process alive) and /ready (every required upstream healthy)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from ..deps import GatewayState, get_state
from ..protocol import Readiness
from ..responses import json_response

router = APIRouter(tags=["health"])

State = Annotated[GatewayState, Depends(get_state)]


@router.get("/health", summary="200 while the gateway process runs")
async def health() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a required model is not ready"}},
    summary="Per-model upstream readiness; 503 until every required model is healthy",
)
async def ready(state: State) -> Response:
    ok, models = await state.readiness.all()
    return json_response({"ready": ok, "models": models}, 200 if ok else 503)
