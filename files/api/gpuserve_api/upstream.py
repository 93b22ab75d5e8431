"""Upstream clients: how the gateway talks to one vLLM OpenAI server.

``UpstreamClient`` is the interface the serving layer uses; ``HttpxUpstream`` is the
implementation (pooled keep-alive connections, TCP or unix socket). Transport problems
surface as ``UpstreamUnavailable`` (connect/protocol: 503) or ``UpstreamTimeout`` (504).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping

import httpx

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


def _map_error(name: str, err: Exception) -> UpstreamFailure:
    if isinstance(err, httpx.TimeoutException):
        return UpstreamTimeout(name, f"timed out ({type(err).__name__})")
    return UpstreamUnavailable(name, f"{type(err).__name__}: {err or 'connection failed'}")


class _HttpxResponse(UpstreamResponse):
    def __init__(self, name: str, resp: httpx.Response) -> None:
        self._name = name
        self._resp = resp
        self.status = resp.status_code
        self.headers = resp.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as err:
            raise _map_error(self._name, err) from None

    async def aread(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as err:
            raise _map_error(self._name, err) from None

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxUpstream(UpstreamClient):
    """httpx implementation: one pooled ``AsyncClient`` per upstream (per worker)."""

    def __init__(self, config: Upstream) -> None:
        self.config = config
        t = config.timeouts
        transport = httpx.AsyncHTTPTransport(
            uds=config.uds,
            retries=0,
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
                keepalive_expiry=4.0,  # vLLM (uvicorn) drops idle ones after 5 s
            ),
        )
        self._client = httpx.AsyncClient(
            base_url=config.url,
            transport=transport,
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            headers={"user-agent": "gpuserve-gateway"},
            follow_redirects=False,
        )
        self._health_timeout = httpx.Timeout(t.health)

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        try:
            req = self._client.build_request(method, path, headers=headers, content=body)
        except (httpx.InvalidURL, ValueError) as err:
            raise InvalidUpstreamRequest(str(err)) from None
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as err:
            raise _map_error(self.config.name, err) from None
        return _HttpxResponse(self.config.name, resp)

    async def health(self) -> tuple[bool, str]:
        try:
            resp = await self._client.get("/health", timeout=self._health_timeout)
        except httpx.TimeoutException:
            return False, "health check timed out"
        except httpx.HTTPError as err:
            return False, f"unreachable ({type(err).__name__})"
        if resp.status_code == 200:
            return True, "ok"
        return False, f"/health answered {resp.status_code}"

    async def aclose(self) -> None:
        await self._client.aclose()
