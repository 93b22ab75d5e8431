"""Prometheus metrics of the gateway (engine metrics: scrape each vLLM's own /metrics)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from ..deps import GatewayState, get_state
from ..metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])

State = Annotated[GatewayState, Depends(get_state)]


@router.get("/metrics", summary="Prometheus text format")
async def metrics(state: State) -> Response:
    if state.metrics is None:
        return Response(
            "metrics are disabled (metrics.enabled: false)\n",
            status_code=404,
            media_type="text/plain",
        )
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
