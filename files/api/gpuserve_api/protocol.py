"""Wire formats: pydantic models only (requests, responses, errors).

The OpenAI request models document the fields the gateway itself checks; every other
field is passed to vLLM unchanged (``extra="allow"``). They feed the OpenAPI schema
(docs and fuzzing); the hot path parses JSON once and checks the same fields by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


# --- errors ------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class OpenAIError(BaseModel):
    """OpenAI's (and vLLM's) error shape, used on /v1 and the gateway's own routes."""

    error: ErrorInfo


class TritonError(BaseModel):
    """Triton's error shape, used on /v2."""

    error: str


# The `code` of an error that names none, by status: every error the gateway or nginx
# answers itself carries a string code (stream error events too), so clients see one type.
# nginx_proxy's own answers use the same names (roles/nginx_proxy/templates/nginx.conf.j2).
STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_over_limit",
    429: "too_many_requests",
    431: "headers_over_limit",
    500: "internal_error",
    502: "upstream_error",
    503: "upstream_unavailable",
    504: "upstream_timeout",
}


def status_code_name(status: int) -> str:
    """The string `code` for an HTTP status (``http_<status>`` for one not listed)."""
    return STATUS_CODES.get(status, f"http_{status}")


class GatewayError(Exception):
    """An error the gateway answers itself; routers turn it into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.code if self.code is not None else status_code_name(self.status),
            }
        }

    def triton_body(self) -> dict[str, Any]:
        return {"error": self.message}


# --- OpenAI requests (documentation + fuzzing schema) --------------------------------
class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Passthrough):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Passthrough):
    include_usage: bool | None = None


class CompletionRequest(_Passthrough):
    """POST /v1/completions. Other vLLM/OpenAI fields pass through unchanged."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class ChatCompletionRequest(_Passthrough):
    """POST /v1/chat/completions. Other vLLM/OpenAI fields pass through unchanged."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class ModelCard(_Passthrough):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "vllm"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# --- Triton generate extension ---------------------------------------------------
class TritonGenerateRequest(_Passthrough):
    """Triton's generate request for the vLLM backend.

    Top-level keys other than ``text_input``/``parameters`` count as parameters, as in
    Triton. ``sampling_parameters`` may be a JSON string (Triton vLLM backend style).
    """

    text_input: str
    parameters: dict[str, Any] | None = None
    stream: bool | None = None
    sampling_parameters: str | dict[str, Any] | None = None
    exclude_input_in_output: bool | None = None
    return_finish_reason: bool | None = None
    return_num_input_tokens: bool | None = None
    return_num_output_tokens: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class TritonGenerateResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_name: str
    model_version: str
    text_output: str
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class InferTensor(BaseModel):
    """A KServe v2 tensor; ``data`` in the JSON form, or ``parameters.binary_data_size``
    with the bytes after the JSON (binary tensor data extension)."""

    model_config = ConfigDict(extra="allow")

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """KServe v2 ``$inference_request`` with the vLLM backend's input tensors."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str | None = None


# --- health ----------------------------------------------------------------------
class UpstreamReadiness(BaseModel):
    ready: bool
    required: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, UpstreamReadiness]
