"""Per-request facts shared by the middleware (logs, metrics) and the routers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestInfo:
    request_id: str
    route: str
    key: str = "-"
    model: str = "-"
    status: int = 0
    chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream_error: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
