"""gRPC messages <-> the KServe codec (``serving.kserve``): no I/O here.

Input data travels either in ``raw_input_contents`` (one entry per input, in input
order; tritonclient.grpc always uses it) or in each input's typed ``contents``
(grpc_service.proto ``ModelInferRequest``). Outputs go back as
``raw_output_contents``, the form ``tritonclient.grpc.InferResult.as_numpy`` reads.
"""

from __future__ import annotations

from typing import Any

from ..protocol import GatewayError
from ..serving.kserve import InferCall, InputTensor, OutputTensor, binary_form, decode_binary
from . import inference_pb2 as pb


def param_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def set_param(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def infer_call(req: pb.ModelInferRequest) -> InferCall:
    """An ``InferCall`` from a ModelInferRequest."""
    params = {k: param_value(v) for k, v in req.parameters.items()}
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise GatewayError(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs",
            param="raw_input_contents",
        )
    inputs: dict[str, InputTensor] = {}
    for i, t in enumerate(req.inputs):
        if t.name in inputs:
            raise GatewayError(400, f"input `{t.name}` is given twice", param=t.name)
        if raw:
            data = decode_binary(t.datatype, raw[i], t.name)
        elif t.datatype == "BYTES":
            data = list(t.contents.bytes_contents)
        elif t.datatype == "BOOL":
            data = list(t.contents.bool_contents)
        else:
            data = decode_binary(t.datatype, b"", t.name)  # refuses the datatype
        inputs[t.name] = InputTensor(t.name, t.datatype, list(t.shape), data)
    outputs = {o.name: True for o in req.outputs} if req.outputs else None
    return InferCall(req.id or None, params, inputs, outputs, binary_output=True)


def infer_response(
    call: InferCall, model: str, version: str, outputs: list[OutputTensor]
) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=call.id or "")
    for t in outputs:
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        resp.raw_output_contents.append(binary_form(t))
    return resp


def final_response(call: InferCall, model: str, version: str) -> pb.ModelInferResponse:
    """The empty last response a client asks for with
    ``triton_enable_empty_final_response`` (tritonclient.grpc
    ``async_stream_infer(enable_empty_final_response=True)``)."""
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=call.id or "")
    resp.parameters["triton_final_response"].bool_param = True
    return resp


def model_config(config: dict[str, Any]) -> pb.ModelConfig:
    """The JSON model configuration (``TritonServing.model_config``) as the message."""
    msg = pb.ModelConfig(
        name=config["name"],
        platform=config["platform"],
        backend=config["backend"],
        max_batch_size=config["max_batch_size"],
    )
    msg.version_policy.latest.num_versions = config["version_policy"]["latest"]["num_versions"]
    for i in config["input"]:
        msg.input.add(
            name=i["name"],
            data_type=pb.DataType.Value(i["data_type"]),
            format=pb.ModelInput.Format.Value(i["format"]),
            dims=i["dims"],
            optional=i["optional"],
        )
    for o in config["output"]:
        msg.output.add(name=o["name"], data_type=pb.DataType.Value(o["data_type"]), dims=o["dims"])
    for g in config["instance_group"]:
        msg.instance_group.add(
            name=g["name"], kind=pb.ModelInstanceGroup.Kind.Value(g["kind"]), count=g["count"]
        )
    msg.model_transaction_policy.decoupled = config["model_transaction_policy"]["decoupled"]
    return msg
