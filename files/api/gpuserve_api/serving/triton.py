"""Triton serving: the generate extension and KServe v2 infer (HTTP and gRPC) translated
to ``/v1/completions``; model metadata, config and repository index."""

from __future__ import annotations

import json
import math
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
from .kserve import (
    InferCall,
    OutputTensor,
    encode_infer_response,
    sampling_parameters,
    select_outputs,
)
from .readiness import ReadinessCache

# Triton vLLM backend sampling parameter -> /v1/completions field (same name in vLLM),
# with the type the backend converts a value to: TritonSamplingParams.from_dict
# (vllm_backend src/utils/vllm_backend_utils.py) drops None values, then casts each
# value with int/float/bool/str by vLLM's SamplingParams annotation, so "0.5" works
# as a temperature. Booleans are read as true/false (the backend's bool("false") is
# True, a trap not worth copying); None means "not sent".
TRITON_SAMPLING: dict[str, str] = {
    "max_tokens": "int",
    "min_tokens": "int",
    "temperature": "float",
    "top_p": "float",
    "top_k": "int",
    "min_p": "float",
    "stop": "stop",
    "stop_token_ids": "ids",
    "seed": "int",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "repetition_penalty": "float",
    "ignore_eos": "bool",
    "skip_special_tokens": "bool",
    "spaces_between_special_tokens": "bool",
    "include_stop_str_in_output": "bool",
    "length_penalty": "float",
    "n": "int",
    "best_of": "int",
    "logprobs": "int",
}
TRITON_CONTROL = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
_SUPPORTED = ", ".join([*TRITON_SAMPLING, *TRITON_CONTROL])


def _flag(value: Any, name: str, default: bool = False) -> bool:
    """A Triton boolean flag; ``null`` (or absent) means the default."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if isinstance(value, list) and len(value) == 1:
        return _flag(value[0], name, default)
    raise GatewayError(
        400, f"parameter `{name}` must be a boolean (got {_shown(value)})", param=name
    )


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(name: str, value: Any) -> Any:
    """A sampling parameter as vLLM's type, from a number, a string or a boolean."""
    kind = TRITON_SAMPLING[name]
    bad = GatewayError(
        400,
        f"parameter `{name}` must be {'an integer' if kind == 'int' else 'a ' + kind} "
        f"(got {_shown(value)})",
        param=name,
    )
    if kind == "bool":
        return _flag(value, name)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value.strip()) if kind == "float" else int(value.strip())
            except ValueError:
                raise bad from None
        if kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind == "int" and not isinstance(value, int):
            raise bad
        if kind == "float" and not isinstance(value, (int, float)):
            raise bad
        if kind == "float" and not math.isfinite(value):
            raise bad
        return value
    if kind == "stop":
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return value
        raise GatewayError(
            400, f"parameter `{name}` must be a string or a list of strings", param=name
        )
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return value
    raise GatewayError(400, f"parameter `{name}` must be a list of integers", param=name)


# The vLLM backend's tensors (vllm_backend src/model.py _auto_complete_inputs_and_outputs).
INPUTS: dict[str, str] = {
    "text_input": "BYTES",
    "stream": "BOOL",
    "sampling_parameters": "BYTES",
    "exclude_input_in_output": "BOOL",
    "return_finish_reason": "BOOL",
    "return_num_input_tokens": "BOOL",
    "return_num_output_tokens": "BOOL",
}
OUTPUTS: dict[str, str] = {
    "text_output": "BYTES",
    "finish_reason": "BYTES",
    "num_input_tokens": "UINT32",
    "num_output_tokens": "UINT32",
}
_CONFIG_TYPE = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "UINT32": "TYPE_UINT32"}


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
            "extensions": [
                "generate",
                "generate_stream",
                "binary_tensor_data",
                "model_configuration",
                "model_repository",
            ],
        }

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """KServe v2 model metadata: the tensors of Triton's vLLM backend."""
        if self.known(model, version) is None:
            raise GatewayError(404, f"Request for unknown model: '{model}' is not found")
        return {
            "name": model,
            "versions": ["1"],
            "platform": "vllm",
            "inputs": [{"name": n, "datatype": d, "shape": [1]} for n, d in INPUTS.items()],
            "outputs": [
                {"name": n, "datatype": d, "shape": [1 if n == "num_input_tokens" else -1]}
                for n, d in OUTPUTS.items()
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
        """A generate-extension body: ``text_input`` plus parameters, where top-level
        keys, ``parameters`` and a ``sampling_parameters`` JSON string all count."""
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
        sp = self._sampling_json(sp) if isinstance(sp, str) else sp
        if sp is not None and not isinstance(sp, dict):
            raise GatewayError(
                400, "`sampling_parameters` must be a JSON object", param="sampling_parameters"
            )
        for source in (sp or {}, nested or {}, body):
            params.update(source)
        return self.build(model, version, text, params, stream)

    @staticmethod
    def _sampling_json(text: str) -> Any:
        try:
            return loads_strict(text)
        except GatewayError as err:
            raise GatewayError(
                400,
                f"`sampling_parameters` is not valid JSON ({err.message})",
                param="sampling_parameters",
            ) from None

    def build(
        self,
        model: str,
        version: str | None,
        text: str,
        params: dict[str, Any],
        stream: bool,
    ) -> TritonRequest:
        """Check and convert parameters (one place for generate, infer and gRPC)."""
        sampling: dict[str, Any] = {}
        control: dict[str, Any] = {}
        for key, value in params.items():
            if key in TRITON_SAMPLING:
                if value is not None:  # null: vLLM's default, as the backend does
                    sampling[key] = _convert(key, value)
            elif key in TRITON_CONTROL:
                control[key] = value
            else:
                raise GatewayError(
                    400, f"unsupported parameter `{key}`; supported: {_SUPPORTED}", param=key
                )
        if isinstance(sampling.get("n"), int) and sampling["n"] != 1:
            raise GatewayError(400, "parameter `n` must be 1 on the Triton endpoints", param="n")
        sampling.update(effective_caps(sampling, self.config.limits, TRITON, len(text)))
        exclude = control.get("exclude_input_in_output")
        # Triton's vLLM backend never prepends the prompt to streamed output and
        # refuses an explicit false there (vllm_backend src/utils/request.py).
        exclude_input = _flag(exclude, "exclude_input_in_output", default=stream)
        if stream and not exclude_input:
            raise GatewayError(
                400,
                "When streaming, `exclude_input_in_output` = False is not allowed.",
                param="exclude_input_in_output",
            )
        return TritonRequest(
            model=model,
            version=version or "1",
            text_input=text,
            sampling=sampling,
            exclude_input=exclude_input,
            return_finish_reason=_flag(control.get("return_finish_reason"), "return_finish_reason"),
            return_num_input_tokens=_flag(
                control.get("return_num_input_tokens"), "return_num_input_tokens"
            ),
            return_num_output_tokens=_flag(
                control.get("return_num_output_tokens"), "return_num_output_tokens"
            ),
        )

    def from_infer(
        self, model: str, version: str | None, call: InferCall, streaming_rpc: bool = False
    ) -> tuple[TritonRequest, bool]:
        """A KServe v2 infer call with the vLLM backend's tensors; returns the request
        and whether it streams. Only ModelStreamInfer (``streaming_rpc``) can stream."""
        for name in call.inputs:
            if name not in INPUTS:
                raise GatewayError(
                    400,
                    f"unexpected inference input `{name}` for model `{model}`; inputs: "
                    f"{', '.join(INPUTS)}",
                    param=name,
                )
        for name, tensor in call.inputs.items():
            if tensor.datatype != INPUTS[name]:
                raise GatewayError(
                    400,
                    f"input `{name}` has datatype {tensor.datatype}, expected {INPUTS[name]}",
                    param=name,
                )
            if len(tensor.data) != 1:
                raise GatewayError(
                    400,
                    f"input `{name}` has {len(tensor.data)} elements; this model takes one "
                    "(send several requests, not a batch)",
                    param=name,
                )
        if "text_input" not in call.inputs:
            raise GatewayError(400, "input `text_input` (BYTES) is required", param="text_input")
        text = self._text(call.inputs["text_input"].data[0], "text_input")
        # The backend reads sampling_parameters when the tensor is sent, else the
        # request's parameters (src/utils/request.py, _get_input_tensors).
        if "sampling_parameters" in call.inputs:
            sp = self._sampling_json(
                self._text(call.inputs["sampling_parameters"].data[0], "sampling_parameters")
            )
            if not isinstance(sp, dict):
                raise GatewayError(
                    400, "`sampling_parameters` must be a JSON object", param="sampling_parameters"
                )
        else:
            sp = sampling_parameters(call.parameters)
        for key in TRITON_CONTROL:
            if key in sp:
                raise GatewayError(
                    400,
                    f"`{key}` is an input tensor of this model, not a sampling parameter",
                    param=key,
                )
        params: dict[str, Any] = dict(sp)
        for key in TRITON_CONTROL:
            if key in call.inputs:
                params[key] = call.inputs[key].data[0]
        stream = _flag(params.pop("stream", None), "stream")
        if stream and not streaming_rpc:
            raise GatewayError(
                400,
                "input `stream` is true: streaming needs gRPC ModelStreamInfer "
                "(tritonclient.grpc stream_infer) or the generate_stream endpoint",
                param="stream",
            )
        return self.build(model, version, text, params, stream), stream

    @staticmethod
    def _text(value: Any, name: str) -> str:
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise GatewayError(400, f"input `{name}` is not valid UTF-8", param=name) from None
        raise GatewayError(400, f"input `{name}` must be BYTES", param=name)

    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (JSON form of model_config.proto ModelConfig)
        as Triton's vLLM backend completes it: backend vllm, max_batch_size 0,
        decoupled (vllm_backend src/model.py auto_complete_config)."""
        if self.known(model, version) is None:
            raise GatewayError(404, f"Request for unknown model: '{model}' is not found")
        return {
            "name": model,
            "platform": "",
            "backend": "vllm",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": 0,
            "input": [
                {
                    "name": name,
                    "data_type": "TYPE_STRING" if dtype == "BYTES" else "TYPE_BOOL",
                    "format": "FORMAT_NONE",
                    "dims": [1],
                    "optional": name != "text_input",
                }
                for name, dtype in INPUTS.items()
            ],
            "output": [
                {"name": name, "data_type": _CONFIG_TYPE[dtype], "dims": [-1]}
                for name, dtype in OUTPUTS.items()
            ],
            "instance_group": [{"name": model, "kind": "KIND_MODEL", "count": 1}],
            "model_transaction_policy": {"decoupled": True},
        }

    async def repository_index(
        self, readiness: ReadinessCache, ready_only: bool
    ) -> list[dict[str, str]]:
        """Triton's repository index: every configured model (aliases are names, not
        models), READY or UNAVAILABLE by the readiness cache."""
        entries = []
        for up in self.config.upstreams:
            ok, _ = await readiness.check(up.name)
            if ok:
                entries.append({"name": up.name, "version": "1", "state": "READY"})
            elif not ready_only:
                entries.append(
                    {
                        "name": up.name,
                        "version": "1",
                        "state": "UNAVAILABLE",
                        "reason": "upstream not ready",
                    }
                )
        return entries

    @staticmethod
    def tensors(req: TritonRequest, out: dict[str, Any]) -> list[OutputTensor]:
        """A generate-style result as the backend's output tensors."""
        tensors = [OutputTensor("text_output", "BYTES", [out["text_output"].encode()])]
        if req.return_finish_reason:
            reason = out.get("finish_reason")
            tensors.append(OutputTensor("finish_reason", "BYTES", [str(reason).encode()]))
        for name in ("num_input_tokens", "num_output_tokens"):
            if getattr(req, f"return_{name}"):
                value = out.get(name)
                count = value if isinstance(value, int) else 0
                tensors.append(OutputTensor(name, "UINT32", [count]))
        return tensors

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

    async def infer(
        self, upstream: UpstreamClient, req: TritonRequest, call: InferCall, info: RequestInfo
    ) -> ProxyResult:
        """KServe v2 HTTP infer: one response, JSON or binary tensors as asked."""
        outputs = select_outputs(call, self.tensors(req, await self.generate(upstream, req, info)))
        body, header_length = encode_infer_response(call, req.model, req.version, outputs)
        headers = {"content-type": "application/json"}
        if header_length is not None:
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(header_length),
            }
        return ProxyResult(200, headers, body=body)

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

    async def stream_pieces(
        self, upstream: UpstreamClient, req: TritonRequest, info: RequestInfo
    ) -> AsyncIterator[dict[str, Any]]:
        """Open the upstream stream (errors raise here), then its pieces (gRPC)."""
        resp = await self._open(upstream, req, info, stream=True)
        async for piece in self.pieces(resp, req, info):
            yield piece

    async def _stream(
        self, resp: UpstreamResponse, req: TritonRequest, info: RequestInfo
    ) -> AsyncIterator[bytes]:
        async for piece in self.pieces(resp, req, info):
            yield b"data: " + json.dumps(piece).encode() + b"\n\n"

    async def pieces(
        self, resp: UpstreamResponse, req: TritonRequest, info: RequestInfo
    ) -> AsyncIterator[dict[str, Any]]:
        """The stream as generate_stream pieces; a failure is a last ``{"error": msg}``."""
        buf = b""
        last_completion = 0
        sent = 0
        try:
            async for chunk in resp.aiter_raw():
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    event = event.strip()
                    if not event.startswith(b"data: {"):
                        continue
                    obj = json.loads(event[6:])
                    if "error" in obj:
                        err = obj["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        yield {"error": msg}
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
                    sent += 1
                    yield piece
        except UpstreamFailure as err:
            info.upstream_error = "broken_stream" if err.kind != "timeout" else "timeout"
            yield {"error": f"upstream stream failed: {err.kind}"}
        except ValueError:
            info.upstream_error = "bad_response"
            yield {"error": "upstream sent an unreadable event"}
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            info.chunks = sent
