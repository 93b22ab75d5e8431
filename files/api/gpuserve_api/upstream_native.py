"""``NativeUpstream``: the upstream client, a lean HTTP/1.1 client on asyncio protocols
and httptools (the interface is in ``upstream.py``).

Built for the streaming hot path (httpx cost 3x and aiohttp 1.2x its CPU per relayed
chunk: docs/performance.md): the response is parsed in C (httptools, already installed with
``uvicorn[standard]``), each request is written with one ``write``, body bytes are
handed over as they arrive (what arrived together is relayed together), and a read
timer is armed only while actually waiting. Pooled keep-alive connections, TCP or unix
socket. Closing an unfinished response closes its connection, so vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

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
_HIGH_WATER = 512 * 1024
_LOW_WATER = 64 * 1024


def _stale(conn: _Conn) -> bool:
    """An idle connection must have nothing to read: readable means the upstream closed
    it (EOF) or sent bytes no request asked for. Checked before reuse, without waiting:
    the event loop may not have run ``connection_lost`` yet."""
    transport = conn.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Conn(asyncio.Protocol):
    def __init__(self, owner: NativeUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: _NativeResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        # Bytes received since the current request was written (0: no answer yet).
        self.received = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(UpstreamUnavailable(self.owner.name, f"bad HTTP from upstream: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.resp
        if (
            resp is not None
            and resp.status
            and exc is None
            and "content-length" not in resp.headers
            and "chunked" not in resp.headers.get("transfer-encoding", "")
        ):
            resp._finish()  # a body delimited by the connection's end (HTTP/1.0 style)
            return
        self._fail(UpstreamUnavailable(self.owner.name, "upstream closed the connection"))

    def pause_writing(self) -> None:  # request bodies are small: nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.resp is not None:
            self.resp.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.resp is not None:
            self.resp._head_done(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is not None:
            resp.keep_alive = self.parser.should_keep_alive()
            resp._finish()

    def _fail(self, err: UpstreamFailure) -> None:
        if self.resp is not None:
            self.resp._fail(err)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _NativeResponse(UpstreamResponse):
    def __init__(self, conn: _Conn, read_timeout: float) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamFailure | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wait_started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.released = False

    # called by the protocol
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _head_done(self, status: int) -> None:
        self.status = status
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers
        }
        self._wake()

    def _feed(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.conn.transport:
            self.paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._cancel_timer()
        self._wake()

    def _fail(self, err: UpstreamFailure) -> None:
        if not self.complete and self.error is None:
            self.error = err
            self._wake()

    # Waiting, with one lazily re-armed timer per response instead of one per wait: a
    # stream waits once per chunk, and arming plus cancelling a timer each time cost more
    # than the rest of the wait (docs/performance.md). The timer fires at most once per
    # read_timeout; it times out only a wait that has lasted read_timeout.
    async def _wait(self) -> None:
        loop = self.loop
        self.waiter = loop.create_future()
        self.wait_started = loop.time()
        if self.timer is None:
            self.timer = loop.call_at(self.wait_started + self.read_timeout, self._check_timer)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _check_timer(self) -> None:
        self.timer = None
        if self.released or self.complete or self.error is not None:
            return
        if self.waiter is None or self.waiter.done():  # not waiting: the next wait re-arms
            return
        due = self.wait_started + self.read_timeout
        if self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._check_timer)
            return
        self.error = UpstreamTimeout(self.conn.owner.name, "read timed out")
        self._wake()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def wait_head(self) -> None:
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def _next(self) -> bytes | None:
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()
        if len(self.chunks) == 1:
            data = self.chunks.popleft()
        else:  # relay together what arrived together
            data = b"".join(self.chunks)
            self.chunks.clear()
        self.buffered = 0
        if self.paused and self.conn.transport:
            self.paused = False
            self.conn.transport.resume_reading()
        return data

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        nxt = self._next
        while True:
            data = await nxt()
            if data is None:
                return
            yield data

    async def aread(self) -> bytes:
        parts = []
        while (data := await self._next()) is not None:
            parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        if self.released:
            return
        self.released = True
        self._cancel_timer()
        conn = self.conn
        conn.resp = None
        if self.complete and self.keep_alive and self.error is None and not conn.closed:
            self.conn.owner._release(conn, reuse=True)
        else:
            conn.close()  # unfinished: closing tells vLLM to abort the request
            self.conn.owner._release(conn, reuse=False)


class NativeUpstream(UpstreamClient):
    def __init__(self, config: Upstream) -> None:
        self.config = config
        self.name = config.name
        t = config.timeouts
        self.connect_timeout = t.connect
        self.read_timeout = t.read
        self.pool_timeout = t.pool
        self.health_timeout = t.health
        self.max_keepalive = config.max_keepalive_connections
        if config.base_url is not None:
            parts = urlsplit(config.base_url)  # http:// only (the config refuses others)
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 80
            self.host_header = parts.netloc
        else:
            self.host, self.port, self.host_header = "", 0, "localhost"
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(config.max_connections)
        self.closing = False

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self.config.uds:
                coro = loop.create_unix_connection(lambda: _Conn(self), self.config.uds)
            else:
                coro = loop.create_connection(lambda: _Conn(self), self.host, self.port)
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(self.name, "connect timed out") from None
        except OSError as err:
            raise UpstreamUnavailable(self.name, f"connect failed: {err.strerror or err}") from None
        return conn

    def _idle_conn(self) -> _Conn | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_EXPIRY_S and not _stale(conn):
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and not self.closing and len(self.idle) < self.max_keepalive:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        elif reuse:
            conn.close()
        self.slots.release()

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        if not path.startswith("/") or any(c in path for c in " \r\n") or not path.isascii():
            raise InvalidUpstreamRequest(f"invalid path {path!r}")
        lines = [f"{method} {path} HTTP/1.1\r\nhost: {self.host_header}\r\n"]
        for k, v in headers.items():
            lines.append(f"{k}: {v}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        request = "".join(lines).encode("latin-1") + (body or b"")
        resp = await self._attempt(request, reuse=True)
        if resp is None:
            # A kept-alive connection the upstream had closed (uvicorn closes one after
            # an unhandled error, or when idle) answered nothing: the request never
            # reached the app, so it is sent once more, on a new connection.
            resp = await self._attempt(request, reuse=False)
            assert resp is not None
        return resp

    async def _attempt(self, request: bytes, reuse: bool) -> _NativeResponse | None:
        """Send on a pooled (``reuse``) or new connection; return once the head arrived.
        None: the pooled connection was closed before any byte of an answer came."""
        if not self.slots.locked():
            await self.slots.acquire()  # free: returns at once (wait_for costs a task)
        else:
            try:
                await asyncio.wait_for(self.slots.acquire(), self.pool_timeout)
            except TimeoutError:
                raise UpstreamTimeout(self.name, "no free upstream connection") from None
        conn = self._idle_conn() if reuse else None
        reused = conn is not None
        if conn is None:
            try:
                conn = await self._connect()
            except BaseException:
                self.slots.release()
                raise
        resp = _NativeResponse(conn, self.read_timeout)
        conn.resp = resp
        conn.received = 0
        conn.parser = httptools.HttpResponseParser(conn)
        assert conn.transport is not None
        conn.transport.write(request)
        if conn.closed:
            resp._fail(UpstreamUnavailable(self.name, "upstream closed the connection"))
        try:
            await resp.wait_head()
        except UpstreamUnavailable:
            await resp.aclose()
            if reused and conn.received == 0:
                return None
            raise
        except BaseException:
            await resp.aclose()
            raise
        return resp

    async def health(self) -> tuple[bool, str]:
        try:
            resp = await asyncio.wait_for(self._health(), self.health_timeout)
        except TimeoutError:
            return False, "health check timed out"
        except UpstreamTimeout:
            return False, "health check timed out"
        except UpstreamFailure as err:
            return False, f"unreachable ({err.detail})"
        if resp == 200:
            return True, "ok"
        return False, f"/health answered {resp}"

    async def _health(self) -> int:
        resp = await self.send("GET", "/health", {"accept-encoding": "identity"}, None)
        try:
            await resp.aread()
        finally:
            await resp.aclose()
        return resp.status

    async def aclose(self) -> None:
        self.closing = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
