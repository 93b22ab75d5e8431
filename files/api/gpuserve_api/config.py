"""Gateway configuration: one YAML file, validated by pydantic at startup.

The Ansible ``gateway`` role templates this file; ``examples/gateway.yml`` is the
commented reference. Every model here forbids unknown keys, so a typo is an error
that names the field instead of a silently ignored setting.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_CONFIG = "GPUSERVE_API_CONFIG"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")

PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    """Where the gateway itself listens (nginx proxies to it)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Seconds uvicorn keeps an idle client connection open.
    keepalive_seconds: PositiveFloat = 75.0
    # On SIGTERM: seconds to let running requests (streams) finish before closing them.
    graceful_shutdown_seconds: int = Field(30, ge=0, le=3600)


class Grpc(_Strict):
    """The KServe v2 / Triton gRPC endpoint (``inference.GRPCInferenceService``).

    Off unless enabled; Triton's own port is 8001. With several workers each binds
    the port with SO_REUSEPORT and the kernel spreads connections over them.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)


class Timeouts(_Strict):
    """Timeouts towards one upstream, in seconds."""

    connect: PositiveFloat = 5.0
    # Longest silence while waiting for response bytes (first token included).
    read: PositiveFloat = 600.0
    write: PositiveFloat = 30.0
    # Waiting for a free pooled connection.
    pool: PositiveFloat = 10.0
    # The upstream /health probe used by /ready.
    health: PositiveFloat = 2.0


class Upstream(_Strict):
    """One vLLM OpenAI server (or the simulator) serving one model.

    The upstream must serve the model under ``name`` (vLLM:
    ``--served-model-name <name>``); requests that use an alias are rewritten to ``name``.
    Exactly one of ``base_url`` and ``uds`` is set.
    """

    name: str
    aliases: list[str] = Field(default_factory=list)
    base_url: str | None = None
    uds: str | None = None
    # /ready answers 503 until every required upstream passes its health check.
    required: bool = True
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # Pooled keep-alive connections towards this upstream (per worker).
    max_connections: int = Field(1024, ge=1, le=65536)
    max_keepalive_connections: int = Field(256, ge=0, le=65536)

    @field_validator("name", "aliases")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            if not _MODEL_NAME.match(item):
                raise ValueError(
                    f"{item!r} is not a valid model name (allowed: letters, digits and "
                    "._:/@+- , 1 to 256 characters, starting with a letter or digit)"
                )
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower().startswith("https://"):
            raise ValueError(
                f"{value!r} is not allowed: the gateway's upstream client speaks plain HTTP "
                "only (vLLM on loopback or a private network); use http://HOST:PORT or uds, "
                "or put a TLS-terminating proxy on this host in front of the remote vLLM"
            )
        if not re.match(r"^http://[^/\s]+(:\d+)?/?$", value):
            raise ValueError(
                f"{value!r} is not allowed: use http://HOST:PORT (no path; the gateway "
                "adds /v1/...), e.g. http://127.0.0.1:8100"
            )
        return value.rstrip("/")

    @field_validator("uds")
    @classmethod
    def _uds(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not allowed: a unix socket path must be absolute")
        return value

    @model_validator(mode="after")
    def _one_address(self) -> Upstream:
        if (self.base_url is None) == (self.uds is None):
            raise ValueError(
                f"upstream {self.name!r}: set exactly one of base_url "
                "(http://127.0.0.1:PORT) and uds (/path/to/socket)"
            )
        return self

    @property
    def url(self) -> str:
        """Base URL for HTTP requests (a placeholder host when a unix socket is used)."""
        return self.base_url if self.base_url is not None else "http://localhost"


class Auth(_Strict):
    """API keys. The keys file holds sha256 hashes only (see docs/api.md)."""

    enabled: bool = False
    keys_file: str | None = None

    @model_validator(mode="after")
    def _file_when_enabled(self) -> Auth:
        if self.enabled and not self.keys_file:
            raise ValueError("auth.enabled is true, so auth.keys_file must be set")
        return self


class Limits(_Strict):
    """Request caps. In-flight caps hold for the whole gateway, all workers together."""

    max_tokens: int = Field(4096, ge=1)
    max_n: int = Field(8, ge=1)
    # Characters of prompt text (completions prompt, or all chat message content).
    max_prompt_chars: int = Field(262144, ge=1)
    # Request body size; larger bodies get 413 before they are read.
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Requests being processed at once (streams count until they end); 0 = no cap.
    max_in_flight: int = Field(1024, ge=0)
    max_in_flight_per_key: int = Field(256, ge=0)
    # Value of the Retry-After header on 429.
    retry_after_seconds: int = Field(1, ge=0)
    # Request headers: total bytes (names + values) and count; more is a 431.
    max_header_bytes: int = Field(32768, ge=1024)
    max_headers: int = Field(100, ge=8)


class Logging(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    # One line per request with id, model, key name, status, durations and tokens.
    access_log: bool = True
    # Prompt and completion text in the logs: off unless explicitly enabled.
    log_prompts: bool = False


class Metrics(_Strict):
    enabled: bool = True
    # Directory for prometheus_client's multiprocess files when workers > 1;
    # default: a fresh temporary directory per gateway start.
    multiproc_dir: str | None = None


class Readiness(_Strict):
    # Seconds a /ready result is reused before upstreams are probed again.
    cache_seconds: float = Field(1.0, ge=0)


class GatewayConfig(_Strict):
    listen: Listen = Field(default_factory=Listen)
    grpc: Grpc = Field(default_factory=Grpc)
    upstreams: list[Upstream] = Field(min_length=1)
    auth: Auth = Field(default_factory=Auth)
    limits: Limits = Field(default_factory=Limits)
    logging: Logging = Field(default_factory=Logging)
    metrics: Metrics = Field(default_factory=Metrics)
    readiness: Readiness = Field(default_factory=Readiness)

    @model_validator(mode="after")
    def _grpc_port_free(self) -> GatewayConfig:
        if self.grpc.enabled and self.grpc.port == self.listen.port:
            raise ValueError(
                f"grpc.port {self.grpc.port} is also listen.port: the gRPC endpoint needs "
                "its own port (Triton's is 8001)"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: dict[str, str] = {}
        for up in self.upstreams:
            for name in [up.name, *up.aliases]:
                if name in seen:
                    raise ValueError(
                        f"model name {name!r} is used twice (upstreams {seen[name]!r} and "
                        f"{up.name!r}); every name and alias must be unique"
                    )
                seen[name] = up.name
        return self


class ConfigError(Exception):
    """A configuration problem, with one human-readable message."""


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The settings allowed next to the unknown key at ``loc``."""
    model: Any = GatewayConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
        for arg in typing.get_args(model) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(tuple(item["loc"]))
            msg = "unknown setting" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif item["type"] == "missing":
            msg = "required setting is missing"
        elif "input" in item and item["type"] not in {"value_error", "assertion_error"}:
            msg = f"{msg} (got {item['input']!r})"
        lines.append(f"{loc}: {msg}")
    return f"invalid gateway config {source}: " + "; ".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate already-loaded YAML data; raise ConfigError with one clear message."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid gateway config {source}: the top level must be a mapping with at "
            f"least 'upstreams' (got {type(data).__name__})"
        )
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Load the gateway config from ``path`` or ``$GPUSERVE_API_CONFIG``."""
    if path is None:
        path = os.environ.get(ENV_CONFIG)
    if not path:
        raise ConfigError(f"no gateway config: pass --config PATH or set {ENV_CONFIG}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read gateway config {p}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid gateway config {p}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(p))
