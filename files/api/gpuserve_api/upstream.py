"""The upstream interface: how the serving layer talks to one vLLM OpenAI server.

``UpstreamClient`` is the interface; ``upstream_native.NativeUpstream`` its one
implementation. Transport problems surface as ``UpstreamUnavailable`` (connect/protocol:
503) or ``UpstreamTimeout`` (504).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping

from .config import Upstream


class UpstreamFailure(Exception):
    """Transport-level failure towards an upstream."""

    kind = "error"

    def __init__(self, upstream: str, detail: str) -> None:
        super().__init__(f"upstream {upstream!r}: {detail}")
        self.upstream = upstream
        self.detail = detail


class UpstreamUnavailable(UpstreamFailure):
    kind = "unavailable"


class UpstreamTimeout(UpstreamFailure):
    kind = "timeout"


class InvalidUpstreamRequest(ValueError):
    """The request cannot be expressed towards the upstream (e.g. an invalid URL)."""


class UpstreamResponse(abc.ABC):
    """A response whose body is read incrementally; always ``aclose()`` it."""

    status: int
    headers: Mapping[str, str]

    @abc.abstractmethod
    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def aread(self) -> bytes: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class UpstreamClient(abc.ABC):
    """One upstream (one vLLM instance)."""

    config: Upstream

    @abc.abstractmethod
    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """Send a request; return once the status line and headers arrived."""

    @abc.abstractmethod
    async def health(self) -> tuple[bool, str]:
        """Probe ``/health``: (healthy, detail)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
