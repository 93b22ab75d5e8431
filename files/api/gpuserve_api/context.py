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

    def access_fields(
        self, method: str, path: str, start: float, end: float, first: float | None
    ) -> dict[str, Any]:
        """The access-log line's fields (HTTP middleware and gRPC service alike)."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": method,
            "path": path,
            "route": self.route,
            "model": self.model,
            "key": self.key,
            "status": self.status,
            "duration_ms": round((end - start) * 1000, 3),
            "ttfb_ms": round((first - start) * 1000, 3) if first is not None else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "chunks": self.chunks,
        }
        if self.upstream_error:
            fields["upstream_error"] = self.upstream_error
        if self.error:
            fields["error"] = self.error
        return fields
