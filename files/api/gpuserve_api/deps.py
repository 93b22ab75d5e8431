"""Shared dependencies (async: FastAPI would run sync ones in a thread pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .config import GatewayConfig
from .context import RequestInfo
from .metrics import GatewayMetrics
from .serving.common import Registry
from .serving.openai import OpenAIServing
from .serving.readiness import ReadinessCache
from .serving.triton import TritonServing


@dataclass
class GatewayState:
    """Everything the routers need; built in the lifespan, kept on ``app.state.gw``."""

    config: GatewayConfig
    registry: Registry
    openai: OpenAIServing
    triton: TritonServing
    readiness: ReadinessCache
    metrics: GatewayMetrics | None


async def get_state(request: Request) -> GatewayState:
    return request.app.state.gw


async def get_info(request: Request) -> RequestInfo:
    return request.state.gw_info


# What a route handler declares to receive them.
State = Annotated[GatewayState, Depends(get_state)]
Info = Annotated[RequestInfo, Depends(get_info)]
