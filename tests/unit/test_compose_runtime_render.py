"""roles/compose_runtime's docker-compose.yml rendered by Ansible's own templating, with the
defaults of the roles whose public variables it reads (vllm_service, gateway, nginx_proxy) and
its own: one service per model with its GPUs, environment, health check and limits, the
gateway, nginx waiting for the gateway. When a compose v2 binary is on this
machine (`docker compose`, or tests/fixtures/compose_v2/fetch.sh's copy), the rendered file
also goes through `docker compose config -q`, the check the role runs before it replaces the
live file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
IMAGES = {
    "engine": "gpuserve/vllm:0123456789ab",
    "gateway": "gpuserve/gateway:fedcba987654",
    "nginx": "gpuserve/nginx:a1b2c3d4e5f6",
}
GIDS = {"models": 994, "gateway": 993}
MODELS: list[dict[str, Any]] = [
    {
        "name": "phi-2",
        "source": {
            "type": "hf",
            "repo_id": "microsoft/phi-2",
            "revision": "ef382358ec9e382308935a992d908de099b64c23",
        },
        "cuda_visible_devices": "2,3",
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "compose": {"mem_limit": "48g", "cpus": 12, "shm_size": "32g"},
        "extra_args": {"enforce-eager": "", "chat-template": "/etc/vllm/chat templates/t.jinja"},
    },
    {
        "name": "tiny",
        "source": {"type": "local", "path": "/nfs/models/tiny"},
        "revision": "v1",
        "listen": "tcp",
        "port": 8100,
        "cuda_visible_devices": "GPU-1a2b3c4d",
        "env": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"},
    },
    {"name": "any-gpu", "source": {"type": "local", "path": "/m/x", "copy": True}},
]


def _load(path: Path) -> dict[str, Any]:
    return DataLoader().load_from_file(str(path), trusted_as_template=True) or {}


def render(**overrides: Any) -> tuple[str, dict[str, Any]]:
    """(text, parsed) of the compose file for `overrides` over the roles' defaults."""
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for role in ("vllm_service", "gateway", "nginx_proxy"):
        variables.update(_load(ROLES / role / "defaults" / "main.yml"))
    for part in ("defaults/main.yml", "vars/main.yml"):
        variables.update(_load(ROLES / "compose_runtime" / part))
    variables.update(
        inventory_hostname="gpu1",
        ansible_managed="Ansible managed",
        ansible_facts={"memtotal_mb": 65536, "processor_vcpus": 16},
        role_path=str(ROLES / "gateway"),
        vllm_service_models=MODELS,
        _compose_runtime_images=IMAGES,
        _compose_runtime_gids=GIDS,
        _compose_runtime_kept_services={},
    )
    variables.update(overrides)
    text = (ROLES / "compose_runtime" / "templates" / "docker-compose.yml.j2").read_text()
    templar = Templar(loader=loader, variables=variables)
    out = templar.template(trust_as_template(text), escape_backslashes=False)
    return out, yaml.safe_load(out)


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return render()[1]


def test_one_service_per_model_then_the_gateway_and_nginx(project: dict[str, Any]) -> None:
    assert project["name"] == "gpuserve"
    assert list(project["services"]) == [
        "vllm-phi-2",
        "vllm-tiny",
        "vllm-any-gpu",
        "gateway",
        "nginx",
    ]
    for name, svc in project["services"].items():
        assert svc["network_mode"] == "host", name
        assert svc["restart"] == "unless-stopped", name
        assert svc["logging"] == {
            "driver": "json-file",
            "options": {"max-size": "50m", "max-file": "5"},
        }, name
        assert svc["read_only"] is True, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["cap_drop"] == ["ALL"], name
        # Host network: `ports:` would be ignored; the processes bind what they are told.
        assert "ports" not in svc, name


def test_gpus_are_reserved_by_host_id_and_numbered_from_zero_inside(
    project: dict[str, Any],
) -> None:
    phi = project["services"]["vllm-phi-2"]
    assert phi["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["2", "3"], "capabilities": ["gpu"]}
    ]
    assert phi["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    tiny = project["services"]["vllm-tiny"]
    assert tiny["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
        "GPU-1a2b3c4d"
    ]
    assert tiny["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-1a2b3c4d"
    anygpu = project["services"]["vllm-any-gpu"]
    assert anygpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert "CUDA_VISIBLE_DEVICES" not in anygpu["environment"]


def test_the_command_line_is_the_systemd_units_one(project: dict[str, Any]) -> None:
    phi = project["services"]["vllm-phi-2"]
    assert phi["image"] == IMAGES["engine"]
    assert phi["entrypoint"][:3] == [
        "/opt/gpuserve/venv/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    store = "/srv/models/microsoft--phi-2@ef382358ec9e382308935a992d908de099b64c23"
    assert phi["entrypoint"][3:] == [
        f"--model={store}",
        "--served-model-name=phi-2",
        "--max-model-len=2048",
        "--tensor-parallel-size=2",
        "--uds=/run/vllm/phi-2.sock",
        "--enforce-eager",
        "--chat-template=/etc/vllm/chat templates/t.jinja",  # one argv item: no shell quoting
    ]
    tiny = project["services"]["vllm-tiny"]["entrypoint"]
    assert "--host=127.0.0.1" in tiny
    assert "--port=8100" in tiny


def test_the_environment_is_the_units_plus_the_instances(project: dict[str, Any]) -> None:
    env = project["services"]["vllm-tiny"]["environment"]
    assert env == {
        "CUDA_VISIBLE_DEVICES": "GPU-1a2b3c4d",
        "DO_NOT_TRACK": "1",
        "HF_HOME": "/var/lib/vllm/hf",
        "HF_HUB_OFFLINE": "1",
        "HOME": "/var/lib/vllm",
        "PYTHONUNBUFFERED": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "XDG_CACHE_HOME": "/var/lib/vllm/cache",
    }


def test_the_units_environment_and_engine_env_match_vllm_service() -> None:
    unit = (ROLES / "vllm_service" / "templates" / "vllm@.service.j2").read_text()
    state = "{{ vllm_service_state_dir }}"
    in_unit = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    ours = _load(ROLES / "compose_runtime" / "vars" / "main.yml")
    mine = {
        k: str(v).replace("{{ _compose_runtime_vllm.state_dir }}", state)
        for k, v in ours["_compose_runtime_unit_env"].items()
    }
    assert mine == in_unit
    theirs = _load(ROLES / "vllm_service" / "vars" / "main.yml")
    assert ours["_compose_runtime_engine_env"] == theirs["_vllm_service_engine_env"]


def test_models_read_only_state_writable_sockets_shared(project: dict[str, Any]) -> None:
    services = project["services"]
    phi = {v["target"]: v for v in services["vllm-phi-2"]["volumes"]}
    assert phi["/srv/models"]["read_only"] is True
    assert phi["/var/lib/vllm"]["source"] == "/var/lib/gpuserve-compose/vllm"
    assert "read_only" not in phi["/var/lib/vllm"]
    assert "read_only" not in phi["/run/vllm"]  # the engine creates its socket there
    tiny = {v["target"]: v for v in services["vllm-tiny"]["volumes"]}
    assert tiny["/nfs/models/tiny"]["read_only"] is True  # the store entry links there
    assert "/run/vllm" not in tiny  # tcp
    anygpu = {v["target"] for v in services["vllm-any-gpu"]["volumes"]}
    assert "/m/x" not in anygpu  # copied into the store
    gateway = {v["target"]: v for v in services["gateway"]["volumes"]}
    assert gateway["/run/vllm"]["read_only"] is True
    assert gateway["/etc/gpuserve"]["read_only"] is True
    assert services["vllm-phi-2"]["group_add"] == ["994"]
    assert services["gateway"]["group_add"] == ["993"]


def test_health_checks_and_start_order(project: dict[str, Any]) -> None:
    services = project["services"]
    phi = services["vllm-phi-2"]["healthcheck"]
    assert phi["test"][:3] == ["CMD", "/opt/gpuserve/venv/bin/python", "-c"]
    assert 's.connect("/run/vllm/phi-2.sock")' in phi["test"][3]
    assert "'/health'" in phi["test"][3]
    assert phi["start_period"] == "900s"  # vllm_service_health_timeout
    tiny = services["vllm-tiny"]["healthcheck"]["test"][3]
    assert "http://127.0.0.1:8100/health" in tiny
    gateway = services["gateway"]
    assert "http://127.0.0.1:8080/health" in gateway["healthcheck"]["test"][3]
    # No depends_on on the engines: a model switch changes that list and must not recreate the
    # gateway (up --wait gates on every engine anyway).
    assert "depends_on" not in gateway
    nginx = services["nginx"]
    assert nginx["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert nginx["healthcheck"]["test"][-1] == "https://127.0.0.1:443/health"
    # serving_drain's drain is `compose stop`: nginx's graceful quit, not SIGTERM's fast shutdown.
    assert nginx["stop_signal"] == "SIGQUIT"
    for svc in services.values():
        check = svc["healthcheck"]
        assert (check["interval"], check["timeout"], check["retries"]) == ("5s", "4s", 3)


def test_limits_from_the_entry_or_the_defaults(project: dict[str, Any]) -> None:
    services = project["services"]
    phi = services["vllm-phi-2"]
    assert (phi["mem_limit"], phi["cpus"], phi["shm_size"]) == ("48g", 12.0, "32g")
    tiny = services["vllm-tiny"]
    assert (tiny["mem_limit"], tiny["shm_size"]) == ("49152m", "16g")  # 3/4 of 64 GiB
    assert "cpus" not in tiny  # 0: no CPU cap
    assert services["gateway"]["mem_limit"] == "4g"
    assert services["nginx"]["mem_limit"] == "1g"
    assert phi["ulimits"] == {"nofile": {"soft": 65536, "hard": 65536}}
    # Owned by the image's user: Docker 20.10 loses a tmpfs mode= when a stopped container starts.
    assert phi["tmpfs"] == ["/tmp:uid=10001,gid=10001,mode=1777,size=2g"]
    assert services["gateway"]["tmpfs"] == [
        "/tmp:uid=10001,gid=10001,mode=1777,size=256m",
        "/run/gpuserve-gateway:uid=10001,gid=10001,mode=1777,size=64m",
    ]


def test_only_nginx_listens_beyond_loopback(project: dict[str, Any]) -> None:
    services = project["services"]
    for name in ("vllm-phi-2", "vllm-tiny", "vllm-any-gpu"):
        argv = services[name]["entrypoint"]
        hosts = [a for a in argv if a.startswith("--host=")]
        uds = [a for a in argv if a.startswith("--uds=")]
        assert hosts == ["--host=127.0.0.1"] or (uds and not hosts), name
    # The gateway binds gateway.yml's listen.host (gateway_listen_host, 127.0.0.1 by default).
    assert services["gateway"]["entrypoint"] == [
        "/opt/gpuserve/venv/bin/gpuserve-gateway",
        "serve",
        "--config",
        "/etc/gpuserve/gateway.yml",
    ]
    nginx = services["nginx"]
    assert nginx["entrypoint"] == ["nginx", "-g", "daemon off;"]
    assert "NET_BIND_SERVICE" in nginx["cap_add"]
    mounts = {v["target"]: v.get("read_only", False) for v in nginx["volumes"]}
    assert mounts == {
        "/etc/nginx/nginx.conf": True,
        "/etc/nginx/conf.d": True,
        "/etc/nginx/tls": True,
        "/etc/nginx/gpuserve": True,
        # monitoring's scrape proxy serves the models' /metrics from their sockets.
        "/run/vllm": True,
        "/var/log/nginx": False,
    }


def test_the_simulator_gets_no_gpus_and_its_own_flags() -> None:
    _, project = render(
        vllm_service_engine="simulator",
        _compose_runtime_images={**IMAGES, "engine": "gpuserve/engine-simulator:abc"},
    )
    services = project["services"]
    for name in ("vllm-phi-2", "vllm-tiny", "vllm-any-gpu"):
        svc = services[name]
        assert "deploy" not in svc, name
        assert "CUDA_VISIBLE_DEVICES" not in svc["environment"], name
        assert "VLLM_HOST_IP" not in svc["environment"], name
        assert svc["entrypoint"][0] == "/opt/gpuserve/venv/bin/gpuserve-sim", name
    # hf models are not staged for the simulator: no models mount.
    phi = {v["target"] for v in services["vllm-phi-2"]["volumes"]}
    assert "/srv/models" not in phi
    assert services["vllm-phi-2"]["entrypoint"][1] == "--model=phi-2"


def test_no_nginx_and_an_ipv6_gateway() -> None:
    _, project = render(compose_runtime_nginx_enabled=False, gateway_listen_host="::1")
    services = project["services"]
    assert "nginx" not in services
    assert "http://[::1]:8080/health" in services["gateway"]["healthcheck"]["test"][3]


def test_a_dollar_in_a_flag_is_escaped_for_compose() -> None:
    models = [MODELS[0] | {"extra_args": {"api-key": "pa$word"}}]
    text, project = render(vllm_service_models=models)
    assert "--api-key=pa$$word" in project["services"]["vllm-phi-2"]["entrypoint"]
    assert "pa$word" not in text.replace("$$", "")


@pytest.mark.parametrize("engine", ["vllm", "simulator"])
def test_docker_compose_config_accepts_the_file(
    engine: str, tmp_path: Path, compose_v2: list[str]
) -> None:
    compose = compose_v2
    text, _ = render(vllm_service_engine=engine)
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    run = subprocess.run(
        [*compose, "--project-name", "gpuserve", "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # And what compose makes of it: the GPU request and the limits survive normalisation.
    full = subprocess.run(
        [*compose, "--project-name", "gpuserve", "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    normalised = yaml.safe_load(full.stdout)["services"]
    if engine == "vllm":
        devices = normalised["vllm-phi-2"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == ["2", "3"]
    assert normalised["nginx"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert re.fullmatch(r"\d+", str(normalised["vllm-phi-2"]["mem_limit"]))


def test_the_models_with_compose_limits_pass_vllm_services_spec() -> None:
    from test_argument_specs import validate

    assert validate("vllm_service", {"vllm_service_models": MODELS}) == []
    wrong = [MODELS[0] | {"compose": {"memory": "4g"}}]
    (error,) = validate("vllm_service", {"vllm_service_models": wrong})
    assert "vllm_service_models.compose.memory" in error


SERVER = """
import http.server, os, socketserver, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def address_string(self):
        return "uds"
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
socketserver.UnixStreamServer(path, Health).serve_forever()
"""


def test_the_socket_health_probe_passes_through_a_read_only_mount(
    tmp_path: Path, compose_v2: list[str], debian13_test_image: str
) -> None:
    """The rendered probe of a uds model, run by Docker as the health check of a stand-in engine
    (a Python /health server on a unix socket, NOT vLLM) and of a client that mounts the socket
    directory read-only as the gateway does: both must become healthy under `up --wait`, with
    read-only roots, no capabilities and the images' non-root uid. Needs a compose v2 CLI, a
    Docker daemon and the gpuserve-test/debian13 image (make images)."""
    compose, image = compose_v2, debian13_test_image
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chown(run_dir, 10001, 10001)
    (tmp_path / "server.py").write_text(SERVER)
    models = [MODELS[0]]
    _, rendered = render(vllm_service_models=models, vllm_service_run_dir=str(run_dir))
    engine = rendered["services"]["vllm-phi-2"]
    probe = engine["healthcheck"]["test"][3].replace("$$", "$")
    socket_path = str(run_dir / "phi-2.sock")
    assert socket_path in probe
    shared = {"type": "bind", "source": str(run_dir), "target": str(run_dir)}
    check = {"test": ["CMD", "python3", "-c", probe], "interval": "1s", "retries": 3}
    base = {
        "image": image,
        "user": engine["user"],
        "network_mode": "host",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": check | {"start_period": "20s"},
    }
    server = {"type": "bind", "source": str(tmp_path / "server.py"), "target": "/srv/server.py"}
    project = {
        "name": "compose-test-probe",
        "services": {
            "engine": base
            | {
                "entrypoint": ["python3", "/srv/server.py", socket_path],
                "volumes": [server | {"read_only": True}, shared],
            },
            "gateway": base
            | {
                "entrypoint": ["sleep", "infinity"],
                "volumes": [shared | {"read_only": True}],
                "depends_on": {"engine": {"condition": "service_healthy"}},
            },
        },
    }
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(project, sort_keys=False).replace("$", "$$"))
    cli = [*compose, "-f", str(path)]
    try:
        up = subprocess.run(
            [*cli, "up", "--detach", "--wait", "--wait-timeout", "60"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        ps = subprocess.run(
            [*cli, "ps", "--all", "--format", "json"], capture_output=True, text=True, check=True
        )
        # One JSON array (compose < 2.21) or one object per line, as the role's verify reads it.
        out = ps.stdout.strip()
        containers = (
            yaml.safe_load(out)
            if out.startswith("[")
            else [yaml.safe_load(line) for line in out.splitlines()]
        )
        states = {c["Service"]: (c["State"], c.get("Health")) for c in containers}
        assert up.returncode == 0, up.stderr
        assert states == {"engine": ("running", "healthy"), "gateway": ("running", "healthy")}
    finally:
        subprocess.run([*cli, "down", "--timeout", "1"], capture_output=True, check=False)
