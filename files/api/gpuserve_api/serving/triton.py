"""Triton serving: the generate extension translated to ``/v1/completions``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from .. import __version__
from ..config import GatewayConfig
from ..context import RequestInfo
from ..protocol import GatewayError
from ..upstream import UpstreamClient, UpstreamFailure, UpstreamResponse
from .common import (
    TRITON,
    ProxyResult,
    Registry,
    effective_caps,
    loads_strict,
    note_usage,
    parse_json_object,
    read_and_close,
    upstream_error,
)

# Triton vLLM backend sampling parameter -> /v1/completions field (same name in vLLM).
TRITON_SAMPLING = (
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "length_penalty",
    "n",
    "best_of",
    "logprobs",
)
TRITON_CONTROL = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if isinstance(value, list) and len(value) == 1:
        return _flag(value[0], name)
    raise GatewayError(400, f"parameter `{name}` must be a boolean", param=name)


@dataclass
class TritonRequest:
    model: str
    version: str
    text_input: str
    sampling: dict[str, Any]
    exclude_input: bool
    return_finish_reason: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool


class TritonServing:
    """Triton's generate extension translated to ``/v1/completions``."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry

    def known(self, model: str, version: str | None) -> str | None:
        """The canonical name of ``model`` if it exists at ``version`` (only 1 exists)."""
        name = self.registry.names.get(model)
        return name if name is not None and version in (None, "1") else None

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "gpuserve-gateway",
            "version": __version__,
            "extensions": ["generate", "generate_stream"],
        }

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """KServe v2 model metadata: the tensors of Triton's vLLM backend."""
        if self.known(model, version) is None:
            raise GatewayError(404, f"Request for unknown model: '{model}' is not found")
        scalar = [1]
        return {
            "name": model,
            "versions": ["1"],
            "platform": "vllm",
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": scalar},
                {"name": "stream", "datatype": "BOOL", "shape": scalar},
                {"name": "sampling_parameters", "datatype": "BYTES", "shape": scalar},
                {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": scalar},
                {"name": "return_finish_reason", "datatype": "BOOL", "shape": scalar},
                {"name": "return_num_input_tokens", "datatype": "BOOL", "shape": scalar},
                {"name": "return_num_output_tokens", "datatype": "BOOL", "shape": scalar},
            ],
            "outputs": [
                {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
                {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
                {"name": "num_input_tokens", "datatype": "UINT32", "shape": [1]},
                {"name": "num_output_tokens", "datatype": "UINT32", "shape": [-1]},
            ],
        }

    def resolve(self, model: str, version: str | None, info: RequestInfo) -> UpstreamClient:
        if version not in (None, "", "1"):
            raise GatewayError(
                404,
                f"Request for unknown model: '{model}' version {version} "
                "is not found (only version 1 exists)",
                code="model_not_found",
            )
        try:
            canonical, upstream = self.registry.resolve(model)
        except GatewayError:
            raise GatewayError(
                404, f"Request for unknown model: '{model}' is not found", code="model_not_found"
            ) from None
        info.model = canonical
        return upstream

    def parse(self, model: str, version: str | None, raw: bytes, stream: bool) -> TritonRequest:
        body = parse_json_object(raw)
        text = body.pop("text_input", None)
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str):
            raise GatewayError(400, "`text_input` (a string) is required", param="text_input")
        params: dict[str, Any] = {}
        sp = body.pop("sampling_parameters", None)
        nested = body.pop("parameters", None)
        if nested is not None and not isinstance(nested, dict):
            raise GatewayError(400, "`parameters` must be an object", param="parameters")
        for source in (sp, nested):
            if isinstance(source, dict) and isinstance(source.get("sampling_parameters"), str):
                sp = source.pop("sampling_parameters")
        if isinstance(sp, str):
            try:
                sp = loads_strict(sp)
            except GatewayError as err:
                raise GatewayError(
                    400,
                    f"`sampling_parameters` is not valid JSON ({err.message})",
                    param="sampling_parameters",
                ) from None
        if sp is not None and not isinstance(sp, dict):
            raise GatewayError(
                400, "`sampling_parameters` must be a JSON object", param="sampling_parameters"
            )
        for source in (sp or {}, nested or {}, body):
            params.update(source)
        sampling: dict[str, Any] = {}
        control: dict[str, Any] = {}
        for key, value in params.items():
            if key in TRITON_SAMPLING:
                sampling[key] = value
            elif key in TRITON_CONTROL:
                control[key] = value
            else:
                raise GatewayError(
                    400,
                    f"unsupported parameter `{key}`; supported: "
                    f"{', '.join(TRITON_SAMPLING + TRITON_CONTROL)}",
                    param=key,
                )
        for key in ("max_tokens", "min_tokens", "top_k", "seed", "n", "best_of"):
            if isinstance(sampling.get(key), float) and sampling[key].is_integer():
                sampling[key] = int(sampling[key])
        if isinstance(sampling.get("n"), int) and sampling["n"] != 1:
            raise GatewayError(400, "parameter `n` must be 1 on the generate endpoints", param="n")
        sampling.update(effective_caps(sampling, self.config.limits, TRITON, len(text)))
        exclude = control.get("exclude_input_in_output")
        return TritonRequest(
            model=model,
            version=version or "1",
            text_input=text,
            sampling=sampling,
            # Triton's vLLM backend never prepends the prompt to streamed output.
            exclude_input=True if stream else (exclude is not None and _flag(exclude, "e")),
            return_finish_reason=_flag(
                control.get("return_finish_reason", False), "return_finish_reason"
            ),
            return_num_input_tokens=_flag(
                control.get("return_num_input_tokens", False), "return_num_input_tokens"
            ),
            return_num_output_tokens=_flag(
                control.get("return_num_output_tokens", False), "return_num_output_tokens"
            ),
        )

    def _upstream_body(self, req: TritonRequest, canonical: str, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": canonical, "prompt": req.text_input, **req.sampling}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return json.dumps(body, separators=(",", ":")).encode()

    def _out(self, req: TritonRequest, text: str) -> dict[str, Any]:
        return {"model_name": req.model, "model_version": req.version, "text_output": text}

    async def _open(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo, stream: bool
    ) -> UpstreamResponse:
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "x-request-id": info.request_id,
        }
        try:
            resp = await upstream.send(
                "POST", "/v1/completions", headers, self._upstream_body(req, info.model, stream)
            )
        except UpstreamFailure as err:
            raise upstream_error(info, err) from None
        if resp.status != 200:
            try:
                data = await read_and_close(resp)
            except UpstreamFailure as err:
                raise upstream_error(info, err) from None
            if resp.status >= 500:
                info.upstream_error = f"status_{resp.status}"
            try:
                message = json.loads(data)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = data.decode("utf-8", "replace")[:500] or f"upstream {resp.status}"
            status = (
                resp.status
                if resp.status in (400, 404, 413, 429, 503, 504)
                else (400 if resp.status < 500 else 502)
            )
            raise GatewayError(status, message)
        return resp

    async def generate(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo
    ) -> dict[str, Any]:
        resp = await self._open(upstream, req, info, stream=False)
        try:
            data = await read_and_close(resp)
        except UpstreamFailure as err:
            raise upstream_error(info, err) from None
        try:
            obj = json.loads(data)
            choice = obj["choices"][0]
            text = choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            info.upstream_error = "bad_response"
            raise GatewayError(502, "upstream answered an unexpected body") from None
        usage = obj.get("usage") or {}
        note_usage(info, usage)
        out = self._out(req, text if req.exclude_input else req.text_input + text)
        if req.return_finish_reason:
            out["finish_reason"] = choice.get("finish_reason")
        if req.return_num_input_tokens:
            out["num_input_tokens"] = usage.get("prompt_tokens")
        if req.return_num_output_tokens:
            out["num_output_tokens"] = usage.get("completion_tokens")
        return out

    async def open_stream(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo
    ) -> ProxyResult:
        """Open the upstream stream (errors raise here); the events follow as a stream."""
        resp = await self._open(upstream, req, info, stream=True)
        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return ProxyResult(200, headers, stream=self._stream(resp, req, info), close=resp.aclose)

    async def _stream(
        self, resp: UpstreamResponse, req: TritonRequest, info: RequestInfo
    ) -> AsyncIterator[bytes]:
        buf = b""
        last_completion = 0
        sent = 0
        try:
            async for chunk in resp.aiter_raw():
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                out = []
                for event in events:
                    event = event.strip()
                    if not event.startswith(b"data: {"):
                        continue
                    obj = json.loads(event[6:])
                    if "error" in obj:
                        err = obj["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        out.append(b"data: " + json.dumps({"error": msg}).encode() + b"\n\n")
                        continue
                    usage = obj.get("usage")
                    if isinstance(usage, dict):
                        note_usage(info, usage)
                    choices = obj.get("choices") or []
                    if not choices:
                        continue
                    choice = choices[0]
                    piece = self._out(req, choice.get("text") or "")
                    if req.return_finish_reason:
                        piece["finish_reason"] = choice.get("finish_reason")
                    if req.return_num_input_tokens:
                        piece["num_input_tokens"] = (usage or {}).get("prompt_tokens")
                    if req.return_num_output_tokens:
                        total = (usage or {}).get("completion_tokens")
                        if isinstance(total, int):
                            piece["num_output_tokens"] = total - last_completion
                            last_completion = total
                        else:
                            piece["num_output_tokens"] = 1 if piece["text_output"] else 0
                    out.append(b"data: " + json.dumps(piece).encode() + b"\n\n")
                    sent += 1
                if out:
                    yield b"".join(out)
        except UpstreamFailure as err:
            info.upstream_error = "broken_stream" if err.kind != "timeout" else "timeout"
            yield (
                b"data: "
                + json.dumps({"error": f"upstream stream failed: {err.kind}"}).encode()
                + b"\n\n"
            )
        except ValueError:
            info.upstream_error = "bad_response"
            yield b'data: {"error": "upstream sent an unreadable event"}\n\n'
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            info.chunks = sent
