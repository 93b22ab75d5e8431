"""Readiness: upstream /health results, cached, for /ready and KServe v2 health."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..config import GatewayConfig
from .common import Registry


class ReadinessCache:
    """Upstream /health results, reused for ``readiness.cache_seconds``."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.ttl = config.readiness.cache_seconds
        self._cache: dict[str, tuple[float, bool, str]] = {}

    async def check(self, name: str) -> tuple[bool, str]:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        ok, detail = await self.registry.upstreams[name].health()
        self._cache[name] = (time.monotonic(), ok, detail)
        return ok, detail

    async def all(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        ups = self.config.upstreams
        results = await asyncio.gather(*(self.check(u.name) for u in ups))
        models = {
            u.name: {"ready": ok, "required": u.required, "detail": detail}
            for u, (ok, detail) in zip(ups, results, strict=True)
        }
        ready = all(ok for u, (ok, _) in zip(ups, results, strict=True) if u.required)
        return ready, models
