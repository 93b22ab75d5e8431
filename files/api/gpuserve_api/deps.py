"""Shared dependencies (async: FastAPI would run sync ones in a thread pool)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .config import GatewayConfig
from .context import RequestInfo
from .metrics import GatewayMetrics
from .serving import OpenAIServing, ReadinessCache, Registry, TritonServing


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
