"""Triton's decommission and rollback on a host whose new stack runs under the compose runtime.

The stand-in Triton (TEST FIXTURE tests/fixtures/triton_standin: NOT NVIDIA's Triton) runs as
the hosts run it today: a compose project of its own, with an unrelated service, in the host
container's network namespace (so its port 8000 is the host's, as a published port would be).
playbooks/decommission_triton.yml removes it and hands port 8000 over to the compose runtime's
nginx (nginx -t in its container, SIGHUP through compose); playbooks/rollback_triton.yml gives it
back. The compose runtime's own project is not touched by either (separate projects)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHARED = Path("/var/tmp/gpuserve-molecule-compose_runtime/triton")
PROJECT = "ci-compose-triton"
STACK = "gpuserve-ci-compose"
HANDOVER = "/etc/nginx/conf.d/gpuserve-triton-handover.conf"
KEY = "ci-test-key-0123456789"
TRITON_COMPOSE = """\
# TEST FIXTURE: a Triton host's compose project (the stand-in image, NOT NVIDIA's Triton).
services:
  # Triton serving Phi-2; clients call port 8000 of the host.
  triton:
    image: nvcr.io/nvidia/tritonserver:24.08-py3-gpuserve-fixture
    command: ["tritonserver", "--model-repository=/models", "--http-port=8000"]
    network_mode: container:compose_runtime-debian13
    volumes:
      - ./model_repository:/models:ro
    restart: unless-stopped

  # Unrelated to Triton: it must survive the decommission.
  log-shipper:
    image: gpuserve-test/debian12:latest
    command: ["sleep", "infinity"]
    restart: unless-stopped
"""
EXTRA = {
    "triton_decommission_compose_projects": [PROJECT],
    "triton_decommission_gate_validate_certs": False,
    "triton_decommission_gate_api_key": KEY,
    "triton_decommission_gate_model": "tiny",
    "triton_decommission_gate_allow_simulator": True,
    "triton_decommission_gate_retries": 2,
    "triton_decommission_gate_delay": 1,
    "triton_decommission_stop_timeout": 5,
    "triton_decommission_handover_enabled": True,
    # No published port to discover (the stand-in shares the host's namespace): named here.
    "triton_decommission_handover_listen": ["8000"],
    "triton_decommission_handover_api_key": KEY,
    "triton_decommission_handover_grpc_enabled": False,
    "triton_decommission_rollback_ready_timeout": 60,
}


def playbook(request, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            request.config.option.ansible_inventory,
            "--extra-vars",
            json.dumps(EXTRA),
            str(ROOT / "playbooks" / name),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )


def containers(project: str) -> dict[str, str]:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            '{{.Label "com.docker.compose.service"}}\t{{.State}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def ready_8000(host) -> tuple[int, str]:
    """What answers Triton's port on the host: (status, Server header or body start)."""
    out = host.run(
        "curl -s -o /dev/null -w '%{http_code} %header{server}' http://127.0.0.1:8000/v2/health/ready"
    )
    code, _, server = out.stdout.partition(" ")
    return int(code or 0), server


@pytest.fixture(scope="module")
def triton(host):
    """The stand-in Triton project, up and answering port 8000."""
    subprocess.run([str(ROOT / "tests/fixtures/triton_standin/build.sh")], check=True)
    (SHARED / "model_repository/phi-2/1").mkdir(parents=True, exist_ok=True)
    (SHARED / "model_repository/phi-2/config.pbtxt").write_text('backend: "vllm"\n')
    (SHARED / "docker-compose.yml").write_text(TRITON_COMPOSE)
    up = host.run(f"cd {SHARED} && docker compose -p {PROJECT} up -d --wait")
    assert up.rc == 0, up.stderr
    for _ in range(30):
        if ready_8000(host)[0] == 200:
            break
        host.run("sleep 1")
    assert ready_8000(host)[0] == 200
    yield
    subprocess.run(
        f"ids=$(docker ps -aq --filter label=com.docker.compose.project={PROJECT}); "
        '[ -z "$ids" ] || docker rm -f $ids',
        shell=True,
        check=False,
    )


def test_decommission_hands_triton_port_to_the_compose_nginx(request, host, triton) -> None:
    stack_before = containers(STACK)
    run = playbook(request, "decommission_triton.yml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "triton" not in containers(PROJECT)
    assert containers(PROJECT)["log-shipper"] == "running"
    assert "triton:" not in (SHARED / "docker-compose.yml").read_text()
    assert host.file(HANDOVER).exists
    # nginx (the compose project's container) answers Triton's port with the gateway's /v2.
    status, server = ready_8000(host)
    assert status == 200
    assert "nginx" in server
    assert containers(STACK) == stack_before  # the compose runtime's project untouched


def test_rollback_gives_the_port_back_to_triton(request, host, triton) -> None:
    run = playbook(request, "rollback_triton.yml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert containers(PROJECT)["triton"] == "running"
    assert "triton:" in (SHARED / "docker-compose.yml").read_text()
    assert not host.file(HANDOVER).exists
    status, server = ready_8000(host)
    assert status == 200
    assert "nginx" not in server
    nginx_t = host.run(
        f"docker compose -p {STACK} -f /etc/gpuserve/compose/docker-compose.yml"
        " exec -T nginx nginx -t"
    )
    assert nginx_t.rc == 0, nginx_t.stderr
