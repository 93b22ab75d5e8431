"""The gRPC endpoint: Triton's ``inference.GRPCInferenceService`` on grpc.aio.

Same rules as HTTP (``middleware.py``): health RPCs are open, every other RPC needs
``authorization: Bearer <key>`` metadata (lowercase key, as gRPC requires) when auth
is on, and holds an in-flight slot while it runs; each request on a ModelStreamInfer
stream holds its own slot. Metrics and the access log line are those of HTTP, with
routes ``grpc/<Method>`` and the HTTP-equivalent status. A cancelled call (client
gone) cancels its upstream request, so vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import grpc
from grpc import aio

from ..auth import KeyStore, bearer_token
from ..context import RequestInfo
from ..deps import GatewayState
from ..limits import InFlight
from ..logs import ACCESS
from ..metrics import GatewayMetrics
from ..protocol import GatewayError
from ..serving.kserve import select_outputs
from . import convert
from . import inference_pb2 as pb

log = logging.getLogger("gpuserve.gateway")
access_log = logging.getLogger(ACCESS)

SERVICE = "inference.GRPCInferenceService"
_RID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_OPEN = frozenset({"ServerLive", "ServerReady", "ModelReady"})

# HTTP-equivalent status of a GatewayError -> gRPC status code.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> grpc.StatusCode:
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL)


class InferenceService:
    """One instance per worker, over the worker's ``GatewayState``."""

    def __init__(
        self,
        state: GatewayState,
        keys: KeyStore | None,
        limiter: InFlight,
        metrics: GatewayMetrics | None,
    ) -> None:
        self.state = state
        self.triton = state.triton
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.retry_after = str(state.config.limits.retry_after_seconds)
        self.access = state.config.logging.access_log

    # --- the per-call rules ---------------------------------------------------
    def _info(self, context: aio.ServicerContext, method: str) -> RequestInfo:
        rid = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str) and _RID.match(value):
                rid = value
        return RequestInfo(request_id=rid or uuid.uuid4().hex, route=f"grpc/{method}")

    def _authenticate(self, context: aio.ServicerContext, info: RequestInfo) -> None:
        info.key = "anonymous"
        if self.keys is None:
            return
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                header = value
        name = self.keys.lookup(bearer_token(header) or "")
        if name is None:
            info.key = "invalid"
            raise GatewayError(
                401,
                "Invalid or missing API key: send gRPC metadata `authorization: Bearer <key>`",
                "authentication_error",
            )
        info.key = name

    @contextlib.contextmanager
    def _slot(self, info: RequestInfo) -> Any:
        refused = self.limiter.try_acquire(info.key)
        if refused:
            if self.metrics:
                self.metrics.rejected.labels(reason=refused).inc()
            raise GatewayError(429, f"too many requests in flight ({refused}); retry later")
        if self.metrics:
            self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.limiter.release(info.key)
            if self.metrics:
                self.metrics.in_flight.dec()

    def _record(self, info: RequestInfo, start: float, first: float | None) -> None:
        end = time.perf_counter()
        if self.metrics is not None:
            self.metrics.observe(info, start, end, first)
        if not self.access or (info.route.removeprefix("grpc/") in _OPEN and info.status < 400):
            return
        path = f"/{SERVICE}/{info.route.removeprefix('grpc/')}"
        fields = info.access_fields("GRPC", path, start, end, first)
        access_log.info("request", extra={"fields": fields})

    async def _unary(
        self,
        method: str,
        context: aio.ServicerContext,
        work: Callable[[RequestInfo], Awaitable[Any]],
    ) -> Any:
        """Run one unary RPC under the rules; errors end the call with their code."""
        start = time.perf_counter()
        info = self._info(context, method)
        failure: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
        try:
            if method in _OPEN:
                result = await work(info)
            else:
                self._authenticate(context, info)
                with self._slot(info):
                    result = await work(info)
            info.status = 200
            return result
        except GatewayError as err:
            info.status, info.error = err.status, err.message
            trailers = (("retry-after", self.retry_after),) if err.status == 429 else ()
            failure = (status_code(err.status), err.message, trailers)
        except asyncio.CancelledError:
            info.status, info.error = 499, "client cancelled the call"
            raise
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": info.request_id}})
            info.status, info.error = 500, "internal error"
            failure = (
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {info.request_id})",
                (),
            )
        finally:
            self._record(info, start, None)
        code, message, trailers = failure
        await context.abort(code, message, trailing_metadata=trailers)

    # --- health and metadata --------------------------------------------------
    async def server_live(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        async def work(info: RequestInfo) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._unary("ServerLive", context, work)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        async def work(info: RequestInfo) -> pb.ServerReadyResponse:
            ok, _ = await self.state.readiness.all()
            return pb.ServerReadyResponse(ready=ok)

        return await self._unary("ServerReady", context, work)

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        async def work(info: RequestInfo) -> pb.ModelReadyResponse:
            name = self.triton.known(request.name, request.version or None)
            if name is None:
                return pb.ModelReadyResponse(ready=False)
            info.model = name
            ok, _ = await self.state.readiness.check(name)
            return pb.ModelReadyResponse(ready=ok)

        return await self._unary("ModelReady", context, work)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        async def work(info: RequestInfo) -> pb.ServerMetadataResponse:
            meta = self.triton.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._unary("ServerMetadata", context, work)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def work(info: RequestInfo) -> pb.ModelMetadataResponse:
            meta = self.triton.metadata(request.name, request.version or None)
            msg = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for t in meta["inputs"]:
                msg.inputs.add(**t)
            for t in meta["outputs"]:
                msg.outputs.add(**t)
            return msg

        return await self._unary("ModelMetadata", context, work)

    async def model_config(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        async def work(info: RequestInfo) -> pb.ModelConfigResponse:
            config = self.triton.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=convert.model_config(config))

        return await self._unary("ModelConfig", context, work)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        async def work(info: RequestInfo) -> pb.RepositoryIndexResponse:
            entries = await self.triton.repository_index(self.state.readiness, request.ready)
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries]
            )

        return await self._unary("RepositoryIndex", context, work)

    # --- inference ------------------------------------------------------------
    async def model_infer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        async def work(info: RequestInfo) -> pb.ModelInferResponse:
            call = convert.infer_call(request)
            model, version = request.model_name, request.model_version or None
            upstream = self.triton.resolve(model, version, info)
            req, _ = self.triton.from_infer(model, version, call)
            out = await self.triton.generate(upstream, req, info)
            outputs = select_outputs(call, self.triton.tensors(req, out))
            return convert.infer_response(call, req.model, req.version, outputs)

        return await self._unary("ModelInfer", context, work)

    async def model_stream_infer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Decoupled streaming: every request on the stream runs at once; each answers
        with one response, or one per token when its ``stream`` input is true; a
        request's error is a response with ``error_message`` (the stream goes on)."""
        start = time.perf_counter()
        info = self._info(context, "ModelStreamInfer")
        try:
            self._authenticate(context, info)
        except GatewayError as err:
            info.status, info.error = err.status, err.message
            self._record(info, start, None)
            await context.abort(status_code(err.status), err.message)
        queue: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    async for request in requests:
                        tg.start_soon(self._stream_one, request, info.key, queue.put)
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(pump())
        try:
            while (item := await queue.get()) is not None:
                yield item
            await task  # a failure of the request stream itself surfaces here
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stream_one(
        self,
        request: pb.ModelInferRequest,
        key: str,
        send: Callable[[pb.ModelStreamInferResponse], Awaitable[None]],
    ) -> None:
        start = time.perf_counter()
        # The request's own id names it in the logs when it is a usable one.
        rid = request.id if _RID.match(request.id) else uuid.uuid4().hex
        info = RequestInfo(request_id=rid, route="grpc/ModelStreamInfer", key=key)
        first: list[float] = []
        final = request.parameters.get("triton_enable_empty_final_response")
        want_final = final is not None and convert.param_value(final) is True

        async def answer(resp: pb.ModelInferResponse) -> None:
            if want_final:
                resp.parameters["triton_final_response"].bool_param = False
            if not first:
                first.append(time.perf_counter())
            await send(pb.ModelStreamInferResponse(infer_response=resp))

        try:
            with self._slot(info):
                call = convert.infer_call(request)
                model, version = request.model_name, request.model_version or None
                upstream = self.triton.resolve(model, version, info)
                req, stream = self.triton.from_infer(model, version, call, streaming_rpc=True)
                if stream:
                    async for piece in self.triton.stream_pieces(upstream, req, info):
                        if "error" in piece:
                            raise GatewayError(502, str(piece["error"]))
                        tensors = select_outputs(call, self.triton.tensors(req, piece))
                        await answer(convert.infer_response(call, req.model, req.version, tensors))
                else:
                    out = await self.triton.generate(upstream, req, info)
                    tensors = select_outputs(call, self.triton.tensors(req, out))
                    await answer(convert.infer_response(call, req.model, req.version, tensors))
                if want_final:
                    await send(
                        pb.ModelStreamInferResponse(
                            infer_response=convert.final_response(call, req.model, req.version)
                        )
                    )
            info.status = 200
        except GatewayError as err:
            info.status, info.error = err.status, err.message
            await send(pb.ModelStreamInferResponse(error_message=err.message))
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": info.request_id}})
            info.status, info.error = 500, "internal error"
            await send(
                pb.ModelStreamInferResponse(
                    error_message=f"internal error (request id {info.request_id})"
                )
            )
        finally:
            if not info.status:
                info.status, info.error = 499, "client cancelled the stream"
            self._record(info, start, first[0] if first else None)

    # --- wiring ---------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelConfig": unary(self.model_config, pb.ModelConfigRequest),
                "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
                "ModelInfer": unary(self.model_infer, pb.ModelInferRequest),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer,
                    request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=_serialize,
                ),
            },
        )


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


async def start_server(
    state: GatewayState,
    keys: KeyStore | None,
    limiter: InFlight,
    metrics: GatewayMetrics | None,
) -> aio.Server:
    """Bind and start the gRPC server of this worker (``config.grpc``)."""
    config = state.config
    size = config.limits.max_body_bytes
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", max(size, 64 * 1024 * 1024)),
        # Several workers share the port; one worker alone must not share it with
        # an unrelated process that happens to bind it too.
        ("grpc.so_reuseport", 1 if config.listen.workers > 1 else 0),
    ]
    server = aio.server(options=options)
    server.add_generic_rpc_handlers([InferenceService(state, keys, limiter, metrics).handler()])
    address = f"{config.grpc.host}:{config.grpc.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"gRPC: cannot listen on {address} (grpc.host, grpc.port)")
    await server.start()
    log.info("gRPC endpoint started", extra={"fields": {"address": address}})
    return server
