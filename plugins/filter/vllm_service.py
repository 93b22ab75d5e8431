"""vLLM instances: the derived names of a model entry and its command line, in one place.

roles/vllm_service (systemd units) and roles/compose_runtime (docker-compose.yml) both build
an instance from an entry of vllm_service_models with these filters, so a flag, a default or
an environment variable cannot differ between the two runtimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PROGRAMS = {
    "vllm": ["bin/python", "-m", "vllm.entrypoints.openai.api_server"],
    "simulator": ["bin/gpuserve-sim"],
}


def _int(value: Any) -> int:
    """As Jinja's int filter: 0 for what is not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def vllm_service_instances(
    models: list[Mapping[str, Any]],
    models_dir: str,
    run_dir: str,
    listen: str,
    switch: str,
    engine: str,
    health_timeout: int,
) -> list[dict[str, Any]]:
    """One dict per entry of vllm_service_models (``models``), in order: name, served, aliases,
    source, source_type, staged, store, model_dir, listen, port, socket, switch, unit,
    dropin_dir, health_timeout and entry (the entry itself). ``store`` is
    ``<repo_id with / as -->@<revision>`` for hf sources, ``<name>@<revision>`` for local
    (default revision ``local``) and archive (default the sha256's first 12 digits) sources.
    The other arguments are the role's vllm_service_models_dir, _run_dir, _listen,
    _switch_strategy, _engine and _health_timeout."""
    out = []
    for m in models:
        src = m.get("source") or {}
        typ = src.get("type", "")
        if typ == "hf":
            store = f"{str(src.get('repo_id', '')).replace('/', '--')}@{src.get('revision', '')}"
        elif typ == "archive":
            store = f"{m['name']}@{m.get('revision', str(src.get('sha256', ''))[:12])}"
        else:
            store = f"{m['name']}@{m.get('revision', 'local')}"
        out.append(
            {
                "name": m["name"],
                "served": m.get("served_model_name", m["name"]),
                "aliases": m.get("aliases", []),
                "source": src,
                "source_type": typ,
                "staged": typ in ("local", "archive") or (typ == "hf" and engine == "vllm"),
                "store": store,
                "model_dir": f"{models_dir}/{store}",
                "listen": m.get("listen", listen),
                "port": _int(m.get("port", 0)),
                "socket": f"{run_dir}/{m['name']}.sock",
                "switch": m.get("switch", switch),
                "unit": f"vllm@{m['name']}.service",
                "dropin_dir": f"/etc/systemd/system/vllm@{m['name']}.service.d",
                "health_timeout": _int(m.get("health_timeout", health_timeout)),
                "entry": m,
            }
        )
    return out


def _flags(args: Mapping[str, Any]) -> list[str]:
    """Flags from a dict: None, '' or true = bare --k; false = left out; a list = --k=v
    repeated; anything else --k=v."""
    argv: list[str] = []
    for k, v in args.items():
        if v is None or (isinstance(v, str) and v == "") or v is True:
            argv.append(f"--{k}")
        elif v is False:
            continue
        elif isinstance(v, (list, tuple)):
            argv.extend(f"--{k}={item}" for item in v)
        else:
            argv.append(f"--{k}={v}")
    return argv


def vllm_service_instance_argv(
    instance: Mapping[str, Any],
    engine: str,
    venv: str,
    common_args: Mapping[str, Any] | None = None,
    sim_args: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    engine_env: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """The instance's program (the engine's executable in ``venv``), its flags and its
    environment: ``{"program": [...], "args": [...], "env": {...}}``, argv = program + args.

    Real engine: --model=<model_dir> --served-model-name, the entry's dtype, max_model_len,
    gpu_memory_utilization and tensor_parallel_size, the listen flags (--uds or --host/--port),
    then ``common_args`` (vllm_service_common_args) and the entry's extra_args, later keys
    overriding earlier ones in place. Simulator: --model=<served name>, the listen flags,
    --max-model-len (default 4096), ``sim_args`` (vllm_service_sim_args), the entry's sim_args.
    Environment: ``engine_env`` (real engine only), ``env`` (vllm_service_env), the entry's
    env, then CUDA_VISIBLE_DEVICES from the entry's cuda_visible_devices (real engine only).
    Values are strings, as systemd's Environment= and compose's environment take them.
    """
    if engine not in _PROGRAMS:
        raise ValueError(
            f"vllm_service_instance_argv: engine must be vllm or simulator, got {engine!r}"
        )
    simulator = engine == "simulator"
    m = instance["entry"]
    if instance["listen"] == "uds":
        where: dict[str, Any] = {"uds": instance["socket"]}
    else:
        where = {"host": host, "port": instance["port"]}
    if simulator:
        args = {"model": instance["served"]}
        args.update(where)
        args["max-model-len"] = m.get("max_model_len", 4096)
        args.update(sim_args or {})
        args.update(m.get("sim_args") or {})
    else:
        args = {"model": instance["model_dir"], "served-model-name": instance["served"]}
        for k in ("dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size"):
            if k in m:
                args[k.replace("_", "-")] = m[k]
        args.update(where)
        args.update(common_args or {})
        args.update(m.get("extra_args") or {})
    environment: dict[str, Any] = {} if simulator else dict(engine_env or {})
    environment.update(env or {})
    environment.update(m.get("env") or {})
    if "cuda_visible_devices" in m and not simulator:
        environment["CUDA_VISIBLE_DEVICES"] = m["cuda_visible_devices"]
    program = [f"{venv}/{_PROGRAMS[engine][0]}", *_PROGRAMS[engine][1:]]
    return {
        "program": program,
        "args": _flags(args),
        "env": {str(k): str(v) for k, v in environment.items()},
    }


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {
            "vllm_service_instances": vllm_service_instances,
            "vllm_service_instance_argv": vllm_service_instance_argv,
        }
