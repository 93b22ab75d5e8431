"""Prometheus metrics of the gateway (engine metrics: scrape each vLLM's own /metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import State
from ..metrics import CONTENT_TYPE
from ..route_labels import route_label

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus text format")
@route_label("/metrics")
async def metrics(state: State) -> Response:
    if state.metrics is None:
        return Response(
            "metrics are disabled (metrics.enabled: false)\n",
            status_code=404,
            media_type="text/plain",
        )
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
