"""KServe v2 tensors: decode infer requests (JSON and binary), encode infer responses.

Pure codec, no HTTP and no upstream: the HTTP router and the gRPC service both turn
their wire form into ``InferCall`` and answer from ``OutputTensor`` lists.

Shapes, from the published protocol:
- JSON form: KServe v2 REST ``$inference_request`` / ``$inference_response``
  (kserve.github.io, "Open Inference Protocol (V2)").
- Binary form: Triton's binary tensor data extension
  (docs/protocol/extension_binary_data.md): the JSON header's length travels in the
  ``Inference-Header-Content-Length`` header, tensor bytes follow it in input order,
  each input's size in its ``binary_data_size`` parameter; BOOL is one byte per
  element, BYTES elements are a 4-byte little-endian length then the bytes.
  ``binary_data`` on a requested output, or ``binary_data_output`` on the request,
  asks for binary outputs (``tritonclient.http`` sets the latter when it names no
  outputs: tritonclient/http/_utils.py ``_get_inference_request``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from ..protocol import GatewayError
from .common import parse_json_object

HEADER_LENGTH = "inference-header-content-length"

# Request parameters the Triton protocol reserves for itself (tritonclient.utils
# TRITON_RESERVED_REQUEST_PARAMS and the "triton_" prefix): never sampling parameters.
RESERVED_PARAMS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
    }
)
RESERVED_PREFIX = "triton_"

_LEN = struct.Struct("<I")


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    # Flattened elements: bytes for BYTES, bool for BOOL, numbers otherwise.
    data: list[Any]


@dataclass
class InferCall:
    """One decoded inference request."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, InputTensor]
    # Requested outputs (None = all) and, per output, whether it is wanted as binary.
    outputs: dict[str, bool] | None = None
    binary_output: bool = False


@dataclass
class OutputTensor:
    name: str
    datatype: str
    data: list[Any]
    shape: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.shape:
            self.shape = [len(self.data)]


def sampling_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Request parameters without the ones the protocol reserves."""
    return {
        k: v
        for k, v in params.items()
        if k not in RESERVED_PARAMS and not k.startswith(RESERVED_PREFIX)
    }


_MAX_DIMS = 16


def _flatten(value: Any, name: str) -> list[Any]:
    """Row-major elements of nested ``data`` lists (no recursion: depth is the client's)."""
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= _MAX_DIMS:
                raise GatewayError(
                    400, f"input `{name}`: `data` nests deeper than {_MAX_DIMS}", param=name
                )
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            out.append(item)
    return out


def decode_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES elements from their binary form (length-prefixed)."""
    out = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise GatewayError(400, f"input `{name}`: truncated BYTES element", param=name)
        (size,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise GatewayError(400, f"input `{name}`: truncated BYTES element", param=name)
        out.append(raw[pos : pos + size])
        pos += size
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(b)) + b for b in items)


def decode_binary(datatype: str, raw: bytes, name: str) -> list[Any]:
    if datatype == "BYTES":
        return list(decode_bytes(raw, name))
    if datatype == "BOOL":
        return [b != 0 for b in raw]
    raise GatewayError(
        400,
        f"input `{name}`: datatype {datatype} is not supported here (the vLLM model's "
        "inputs are BYTES and BOOL)",
        param=name,
    )


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise GatewayError(
            400, f"input `{name}`: `shape` must be a list of non-negative integers", param=name
        )
    return value


def parse_infer_json(header: dict[str, Any], binary: bytes) -> InferCall:
    """An ``InferCall`` from the JSON header and the binary bytes after it."""
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise GatewayError(400, "`id` must be a string", param="id")
    params = header.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise GatewayError(400, "`parameters` must be an object", param="parameters")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise GatewayError(400, "`inputs` (a non-empty list of tensors) is required", "inputs")
    inputs: dict[str, InputTensor] = {}
    pos = 0
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise GatewayError(400, f"`inputs[{i}]` must be an object with a `name`", "inputs")
        name = item["name"]
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise GatewayError(400, f"input `{name}`: `datatype` is required", param=name)
        shape = _shape(item.get("shape"), name)
        tparams = item.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise GatewayError(400, f"input `{name}`: bad `binary_data_size`", param=name)
            if pos + size > len(binary):
                raise GatewayError(
                    400,
                    f"input `{name}`: binary_data_size {size} is past the end of the body",
                    param=name,
                )
            data = decode_binary(datatype, binary[pos : pos + size], name)
            pos += size
        elif "data" in item:
            data = _flatten(item["data"], name)
            if datatype == "BYTES":
                if not all(isinstance(d, str) for d in data):
                    raise GatewayError(
                        400, f"input `{name}`: BYTES data must be strings", param=name
                    )
                data = [d.encode("utf-8", "surrogatepass") for d in data]
            elif datatype == "BOOL" and not all(isinstance(d, bool) for d in data):
                raise GatewayError(400, f"input `{name}`: BOOL data must be booleans", param=name)
        else:
            raise GatewayError(400, f"input `{name}`: no `data` and no binary data", param=name)
        if name in inputs:
            raise GatewayError(400, f"input `{name}` is given twice", param=name)
        inputs[name] = InputTensor(name, datatype, shape, data)
    if pos != len(binary):
        raise GatewayError(400, "binary data after the last input tensor", code="invalid_body")
    outputs: dict[str, bool] | None = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise GatewayError(400, "`outputs` must be a list", param="outputs")
        outputs = {}
        for i, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise GatewayError(
                    400, f"`outputs[{i}]` must be an object with a `name`", "outputs"
                )
            oparams = item.get("parameters") or {}
            outputs[item["name"]] = bool(isinstance(oparams, dict) and oparams.get("binary_data"))
    binary_output = params.get("binary_data_output") is True
    return InferCall(rid, params, inputs, outputs, binary_output)


def parse_infer_body(raw: bytes, header_length: str | None) -> InferCall:
    """Decode an HTTP infer body, JSON alone or JSON plus binary tensors."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if n < 0 or n > len(raw):
            raise GatewayError(
                400,
                f"Inference-Header-Content-Length {header_length!r} is not a length within "
                f"the body ({len(raw)} bytes)",
                code="invalid_body",
            )
        raw, binary = raw[:n], raw[n:]
    return parse_infer_json(parse_json_object(raw), binary)


def select_outputs(call: InferCall, produced: list[OutputTensor]) -> list[OutputTensor]:
    """The outputs the client asked for (all when it named none)."""
    if call.outputs is None:
        return produced
    by_name = {t.name: t for t in produced}
    for name in call.outputs:
        if name not in by_name:
            raise GatewayError(
                400,
                f"unexpected inference output `{name}`; this request produces: "
                f"{', '.join(by_name) or 'none'}",
                param=name,
            )
    return [by_name[name] for name in call.outputs]


def binary_form(t: OutputTensor) -> bytes:
    if t.datatype == "BYTES":
        return encode_bytes([d if isinstance(d, bytes) else str(d).encode() for d in t.data])
    if t.datatype == "UINT32":
        return struct.pack(f"<{len(t.data)}I", *t.data)
    if t.datatype == "BOOL":
        return bytes(1 if d else 0 for d in t.data)
    raise ValueError(f"no binary form for {t.datatype}")


def _json_data(t: OutputTensor) -> list[Any]:
    if t.datatype == "BYTES":
        return [d.decode("utf-8", "replace") if isinstance(d, bytes) else d for d in t.data]
    return list(t.data)


def encode_infer_response(
    call: InferCall, model: str, version: str, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    out_json = []
    blobs = []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        wanted = call.outputs.get(t.name) if call.outputs is not None else None
        if wanted or (wanted is None and call.binary_output):
            blob = binary_form(t)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(t)
        out_json.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if call.id:
        body["id"] = call.id
    body["outputs"] = out_json
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
