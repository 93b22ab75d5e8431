"""Shared helpers of the triton_decommission scenario's tests."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
FIXTURE_COMPOSE = REPO / "tests/fixtures/triton_standin/docker-compose.yml"
BACKUP_ROOT = "/var/backups/gpuserve/triton"
HANDOVER_CONF = "/etc/nginx/conf.d/gpuserve-triton-handover.conf"
IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3-gpuserve-fixture"


@pytest.fixture
def hv(host):
    """The host's scenario variables (ports are literal ints in molecule.yml)."""
    variables = host.ansible.get_variables()
    name = variables["inventory_hostname"]
    return {
        "name": name,
        "project": f"tdc-{name}",
        "project_dir": f"/var/tmp/gpuserve-molecule-triton_decommission/{name}/triton",
        "http_port": int(variables["tdc_triton_http_port"]),
        "grpc_port": int(variables["tdc_triton_grpc_port"]),
        "nginx_port": int(variables["tdc_nginx_port"]),
    }


def compose_containers(host, project, service):
    out = host.check_output(
        "docker ps -a --filter label=com.docker.compose.project=%s "
        "--filter label=com.docker.compose.service=%s --format '{{.Names}} {{.State}}'",
        project,
        service,
    )
    return [line.split() for line in out.splitlines() if line.strip()]


def run_playbook(playbook, *extra):
    """ansible-playbook against the scenario's inventory, as molecule runs it."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    return subprocess.run(
        ["ansible-playbook", "-i", inventory, str(REPO / "playbooks" / playbook), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
