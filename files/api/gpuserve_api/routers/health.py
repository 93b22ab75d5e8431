"""Gateway health: /health (process alive) and /ready (every required upstream healthy)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import State
from ..protocol import Readiness
from ..responses import json_response
from ..route_labels import route_label

router = APIRouter(tags=["health"])


@router.get("/health", summary="200 while the gateway process runs")
@route_label("/health")
async def health() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a required model is not ready"}},
    summary="Per-model upstream readiness; 503 until every required model is healthy",
)
@route_label("/ready")
async def ready(state: State) -> Response:
    ok, models = await state.readiness.all()
    return json_response({"ready": ok, "models": models}, 200 if ok else 503)
