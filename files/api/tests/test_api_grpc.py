"""The gRPC endpoint with the real tritonclient.grpc client, through the gateway to the
simulator; and the gateway's proto against Triton's published one."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from api_env import ALIAS, KEY_ALICE, KEY_BOB, LIMITS, MODEL
from conftest import upstream
from google.protobuf import descriptor_pb2
from gpuserve_sim.procs import Proc, free_port, start_gateway, start_sim, wait_ready
from tritonclient.grpc import model_config_pb2 as triton_config_pb2
from tritonclient.grpc import service_pb2 as triton_service_pb2
from tritonclient.utils import InferenceServerException

GRPC_DIR = Path(__file__).resolve().parents[1] / "gpuserve_api" / "grpc"
ALICE = {"authorization": f"Bearer {KEY_ALICE}"}
BOB = {"authorization": f"Bearer {KEY_BOB}"}


def _gateway_with_grpc(workdir: Path, sim: Proc, keys_file: Path, **extra: object) -> Proc:
    port = free_port()
    proc = start_gateway(
        workdir,
        {
            "upstreams": [upstream(sim)],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": LIMITS,
            "grpc": {"enabled": True, "port": port},
            **extra,
        },
        wait=False,
    )
    try:
        # Generous: worker processes start slowly on a loaded 2-core CI machine.
        wait_ready(proc.url, proc, timeout=60, path="/ready")
    except BaseException:
        proc.stop()
        raise
    proc.grpc_url = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="module")
def grpc_gateway(workdir: Path, sim: Proc, keys_file: Path) -> Iterator[Proc]:
    proc = _gateway_with_grpc(workdir, sim, keys_file)
    yield proc
    proc.stop()


@pytest.fixture
def gc(grpc_gateway: Proc) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(grpc_gateway.grpc_url)  # type: ignore[attr-defined]
    yield client
    client.close()


def _inputs(prompt: str, **tensors: object) -> list[triton_grpc.InferInput]:
    """The vLLM backend's input tensors, as tritonclient.grpc users build them."""
    text = triton_grpc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    out = [text]
    for name, value in tensors.items():
        if name == "sampling_parameters":
            t = triton_grpc.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([json.dumps(value).encode()], dtype=np.object_))
        else:
            t = triton_grpc.InferInput(name, [1], "BOOL")
            t.set_data_from_numpy(np.array([value], dtype=bool))
        out.append(t)
    return out


# --- the proto: Triton's field numbers, and inference_pb2 is protoc output of it --------
def _compiled(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / "inference.desc"
    rc = protoc.main(
        [
            "protoc",
            f"-I{GRPC_DIR}",
            f"--descriptor_set_out={out}",
            str(GRPC_DIR / "inference.proto"),
        ]
    )
    assert rc == 0
    fdp = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    # protoc's Python output leaves out json_name (derived from the name); so does this.
    stack = list(fdp.message_type)
    while stack:
        message = stack.pop()
        for f in message.field:
            f.ClearField("json_name")
        stack.extend(message.nested_type)
    return fdp


def _fields(messages: list, prefix: str) -> Iterator[tuple[str, str, int, int, bool]]:
    for m in messages:
        name = f"{prefix}.{m.name}"
        for f in m.field:
            yield name, f.name, f.number, f.type, f.label == f.LABEL_REPEATED
        yield from _fields(list(m.nested_type), name)


def test_proto_matches_tritons_field_numbers_and_types(tmp_path: Path) -> None:
    """Every field of the gateway's proto is Triton's: same message, number and type, read
    from tritonclient's compiled grpc_service.proto and model_config.proto."""
    ours = _compiled(tmp_path)
    pool_files = []
    for module in (triton_service_pb2, triton_config_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        pool_files.append(fdp)
    theirs = {
        (msg, field): (number, ftype, repeated)
        for fdp in pool_files
        for msg, field, number, ftype, repeated in _fields(list(fdp.message_type), "inference")
    }
    checked = 0
    for msg, field, number, ftype, repeated in _fields(list(ours.message_type), "inference"):
        assert (msg, field) in theirs, f"{msg}.{field} is not in Triton's protocol"
        assert theirs[(msg, field)] == (number, ftype, repeated), f"{msg}.{field}"
        checked += 1
    assert checked > 60
    service = next(s for s in ours.service if s.name == "GRPCInferenceService")
    triton_methods = {
        m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
        for m in triton_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
        for m in [_method_proto(m)]
    }
    for m in service.method:
        assert triton_methods[m.name] == (
            m.input_type,
            m.output_type,
            m.client_streaming,
            m.server_streaming,
        )


def _method_proto(method: object) -> descriptor_pb2.MethodDescriptorProto:
    out = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(out)  # type: ignore[attr-defined]
    return out


def test_committed_pb2_is_protoc_output_of_the_proto(tmp_path: Path) -> None:
    # Separate process: tritonclient's own `inference` messages sit in this one's pool.
    code = (
        "import sys; from gpuserve_api.grpc import inference_pb2 as m; "
        "sys.stdout.buffer.write(m.DESCRIPTOR.serialized_pb)"
    )
    raw = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    committed = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert committed == _compiled(tmp_path), (
        "inference_pb2.py is stale: regenerate it (see the header of inference.proto)"
    )


# --- health, metadata, config, repository index ----------------------------------------
def test_grpc_health_is_open_and_metadata_needs_a_key(
    gc: triton_grpc.InferenceServerClient,
) -> None:
    assert gc.is_server_live() is True
    assert gc.is_server_ready() is True
    assert gc.is_model_ready(MODEL) is True
    assert gc.is_model_ready(ALIAS, model_version="1") is True
    assert gc.is_model_ready("no-such-model") is False
    assert gc.is_model_ready(MODEL, model_version="2") is False
    with pytest.raises(InferenceServerException, match="API key") as err:
        gc.get_server_metadata()
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    meta = gc.get_server_metadata(headers=ALICE, as_json=True)
    assert meta["name"] == "gpuserve-gateway"
    model = gc.get_model_metadata(MODEL, headers=ALICE, as_json=True)
    assert {i["name"] for i in model["inputs"]} >= {"text_input", "stream", "sampling_parameters"}
    with pytest.raises(InferenceServerException, match="unknown model") as err:
        gc.get_model_metadata("no-such-model", headers=ALICE)
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_model_config_and_repository_index(gc: triton_grpc.InferenceServerClient) -> None:
    config = gc.get_model_config(MODEL, headers=ALICE, as_json=True)["config"]
    assert config["backend"] == "vllm"
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert config["input"][0] == {"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"]}
    index = gc.get_model_repository_index(headers=ALICE, as_json=True)
    assert index == {"models": [{"name": MODEL, "version": "1", "state": "READY"}]}


# --- inference -------------------------------------------------------------------------
def test_grpc_infer(gc: triton_grpc.InferenceServerClient) -> None:
    result = gc.infer(
        MODEL,
        _inputs(
            "alpha beta",
            sampling_parameters={"max_tokens": 5, "temperature": "0.5"},
            return_finish_reason=True,
            return_num_input_tokens=True,
        ),
        request_id="grpc-1",
        headers=ALICE,
    )
    assert result.get_response().id == "grpc-1"
    text = result.as_numpy("text_output")[0].decode()
    assert text.startswith("alpha beta ")  # the backend's default: input prepended
    assert len(text.split()) == 2 + 5
    assert result.as_numpy("finish_reason").tolist() == [b"length"]
    assert result.as_numpy("num_input_tokens").tolist() == [2]


def test_grpc_infer_errors_name_the_parameter(gc: triton_grpc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="`max_tokens`") as err:
        gc.infer(MODEL, _inputs("x"), parameters={"max_tokens": "many"}, headers=ALICE)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match=r"limits\.max_tokens"):
        gc.infer(MODEL, _inputs("x"), parameters={"max_tokens": 10**6}, headers=ALICE)
    with pytest.raises(InferenceServerException, match="ModelStreamInfer"):
        gc.infer(MODEL, _inputs("x", stream=True), headers=ALICE)


def _stream(
    client: triton_grpc.InferenceServerClient, requests: list[dict], final: bool = False
) -> list:
    """Send ``requests`` on one stream; every callback result, until each request ended."""
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)), headers=ALICE)
    for kwargs in requests:
        client.async_stream_infer(MODEL, enable_empty_final_response=final, **kwargs)
    client.stop_stream()  # waits for the server to end the stream
    items = []
    while not got.empty():
        items.append(got.get())
    return items


def test_grpc_stream_infer_streams_tokens(gc: triton_grpc.InferenceServerClient) -> None:
    items = _stream(
        gc,
        [
            {
                "inputs": _inputs(
                    "hello", stream=True, sampling_parameters={"max_tokens": 6, "seed": None}
                ),
                "request_id": "s-1",
            }
        ],
        final=True,
    )
    assert all(error is None for _, error in items), items
    responses = [result.get_response() for result, _ in items]
    assert {r.id for r in responses} == {"s-1"}
    *tokens, last = responses
    assert len(tokens) == 6
    text = "".join(result.as_numpy("text_output")[0].decode() for result, _ in items[:-1])
    assert len(text.split()) == 6
    assert not text.startswith("hello")  # streamed output never carries the prompt
    assert last.parameters["triton_final_response"].bool_param is True
    assert not last.outputs


def test_grpc_stream_infer_error_names_the_parameter_and_stream_goes_on(
    gc: triton_grpc.InferenceServerClient,
) -> None:
    items = _stream(
        gc,
        [
            {"inputs": _inputs("x", exclude_input_in_output=False)},  # fine: not streaming
            {"inputs": _inputs("x"), "parameters": {"top_k": "ten"}},
            {"inputs": _inputs("x"), "parameters": {"max_tokens": 2}},
        ],
    )
    errors = [str(error) for _, error in items if error is not None]
    results = [result for result, error in items if error is None]
    assert len(errors) == 1
    assert "`top_k`" in errors[0]
    assert len(results) == 2  # one response each: `stream` was not set


def test_grpc_counts_in_metrics_and_access_log(
    grpc_gateway: Proc, gc: triton_grpc.InferenceServerClient
) -> None:
    gc.infer(MODEL, _inputs("x"), parameters={"max_tokens": 1}, headers=BOB)
    text = httpx.get(grpc_gateway.url + "/metrics").text
    assert any(
        line.startswith("gpuserve_gateway_requests_total{")
        and 'route="grpc/ModelInfer"' in line
        and 'key="bob"' in line
        and 'status="200"' in line
        for line in text.splitlines()
    ), text
    assert '"route":"grpc/ModelInfer"' in grpc_gateway.log()


# --- limits and client disconnects --------------------------------------------------------
def _running(sim: Proc) -> float:
    for line in httpx.get(sim.url + "/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.split()[-1])
    raise AssertionError("no vllm:num_requests_running")


def _wait_running(sim: Proc, want: float, timeout: float = 2.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := _running(sim)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_grpc_limits_and_cancel_abort_upstream(workdir: Path, keys_file: Path) -> None:
    slow = start_sim(workdir, model=MODEL, ttft_ms=3000, itl_ms=5)
    gw = _gateway_with_grpc(workdir, slow, keys_file, limits={**LIMITS, "max_in_flight_per_key": 1})
    client = triton_grpc.InferenceServerClient(gw.grpc_url)  # type: ignore[attr-defined]
    try:
        done: queue.Queue = queue.Queue()
        pending = client.async_infer(
            MODEL,
            _inputs("x"),
            callback=lambda result, error: done.put(error),
            parameters={"max_tokens": 5},
            headers=ALICE,
        )
        assert _wait_running(slow, 1) == 1
        with pytest.raises(InferenceServerException, match="max_in_flight_per_key") as err:
            client.infer(MODEL, _inputs("x"), headers=ALICE)
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        pending.cancel()  # the client gives up: the gateway closes the upstream request
        assert _wait_running(slow, 0) == 0
        assert "request aborted" in slow.log()
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer(
                MODEL, _inputs("x"), parameters={"max_tokens": 5}, headers=ALICE, client_timeout=0.5
            )
        assert _wait_running(slow, 0) == 0
        assert '"status":499' in gw.log()
    finally:
        client.close()
        gw.stop()
        slow.stop()


def test_grpc_port_in_use_fails_startup(workdir: Path, sim: Proc, keys_file: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gw = start_gateway(
            workdir,
            {"upstreams": [upstream(sim)], "grpc": {"enabled": True, "port": port}},
            wait=False,
        )
        try:
            gw.popen.wait(20)
        finally:
            gw.stop()
    assert gw.popen.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in gw.log()


def test_grpc_with_two_workers_shares_the_port(workdir: Path, sim: Proc, keys_file: Path) -> None:
    """Each worker binds the port (SO_REUSEPORT); every call is answered and counted once."""
    gw = _gateway_with_grpc(workdir, sim, keys_file, listen={"workers": 2})
    try:
        for _ in range(6):  # new channels: connections spread over the workers
            client = triton_grpc.InferenceServerClient(gw.grpc_url)  # type: ignore[attr-defined]
            result = client.infer(MODEL, _inputs("x"), parameters={"max_tokens": 1}, headers=ALICE)
            assert len(result.as_numpy("text_output")[0].split()) == 2
            client.close()
        text = httpx.get(gw.url + "/metrics").text
        counted = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("gpuserve_gateway_requests_total{")
            and 'route="grpc/ModelInfer"' in line
        )
        assert counted == 6
    finally:
        gw.stop()
