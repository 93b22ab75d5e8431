"""``AiohttpUpstream``: the upstream interface over aiohttp's client (C HTTP parser).

Pooled keep-alive connections (TCP or unix socket). Closing an unfinished response
closes its connection, so vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from .config import Upstream
from .upstream import (
    InvalidUpstreamRequest,
    UpstreamClient,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# vLLM (uvicorn) closes idle keep-alive connections after 5 s: reuse only younger ones.
IDLE_EXPIRY_S = 4.0


def _map_error(name: str, err: BaseException) -> UpstreamFailure:
    if isinstance(err, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(name, f"timed out ({type(err).__name__})")
    return UpstreamUnavailable(name, f"{type(err).__name__}: {err or 'connection failed'}")


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, name: str, resp: aiohttp.ClientResponse) -> None:
        self._name = name
        self._resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise _map_error(self._name, err) from None

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise _map_error(self._name, err) from None

    async def aclose(self) -> None:
        resp = self._resp
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()  # unfinished: closing the connection tells vLLM to abort


class AiohttpUpstream(UpstreamClient):
    def __init__(self, config: Upstream) -> None:
        self.config = config
        t = config.timeouts
        self._base = config.url
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=t.pool + t.connect, sock_connect=t.connect, sock_read=t.read
        )
        self._health_timeout = aiohttp.ClientTimeout(total=t.health)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            c = self.config
            kw = {"limit": c.max_connections, "keepalive_timeout": IDLE_EXPIRY_S}
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=c.uds, **kw) if c.uds else aiohttp.TCPConnector(**kw)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                headers={"user-agent": "gpuserve-gateway"},
                skip_auto_headers=("accept-encoding",),
            )
        return self._session

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        if not path.startswith("/") or any(c in path for c in " \r\n") or not path.isascii():
            raise InvalidUpstreamRequest(f"invalid path {path!r}")
        try:
            url = URL(self._base + path, encoded=True)
        except ValueError as err:
            raise InvalidUpstreamRequest(str(err)) from None
        try:
            resp = await self._get_session().request(
                method, url, headers=dict(headers), data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise _map_error(self.config.name, err) from None
        return _AiohttpResponse(self.config.name, resp)

    async def health(self) -> tuple[bool, str]:
        try:
            async with self._get_session().get(
                self._base + "/health", timeout=self._health_timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            return False, "health check timed out"
        except aiohttp.ClientError as err:
            return False, f"unreachable ({type(err).__name__})"
        if status == 200:
            return True, "ok"
        return False, f"/health answered {status}"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
