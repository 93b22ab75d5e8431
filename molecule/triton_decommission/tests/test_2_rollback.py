"""rollback_triton.yml, then the gate: a decommission with the new stack down changes nothing.

Runs after test_1_decommission.py (file order): the module fixtures run each playbook once for
both hosts.
"""

import hashlib

import httpx
import pytest
import tritonclient.http as triton_http
from conftest import BACKUP_ROOT, FIXTURE_COMPOSE, HANDOVER_CONF, compose_containers, run_playbook


@pytest.fixture(scope="module")
def rollback():
    result = run_playbook("rollback_triton.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def blocked(rollback):
    """The decommission playbook run again with the new stack stopped by the rollback."""
    return run_playbook("decommission_triton.yml")


def test_rollback_restores_the_compose_file_byte_for_byte(host, hv, rollback):
    content = host.file(f"{hv['project_dir']}/docker-compose.yml").content_string
    assert (
        hashlib.sha256(content.encode()).hexdigest()
        == hashlib.sha256(FIXTURE_COMPOSE.read_bytes()).hexdigest()
    )


def test_rollback_removes_the_nginx_handover(host, rollback):
    assert not host.file(HANDOVER_CONF).exists


def test_rollback_starts_the_stand_in_triton_and_it_is_ready(host, hv, rollback):
    assert [state for _name, state in compose_containers(host, hv["project"], "triton")] == [
        "running"
    ]
    assert (
        httpx.get(f"http://127.0.0.1:{hv['http_port']}/v2/health/ready", timeout=10).status_code
        == 200
    )
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{hv['http_port']}")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton"
    assert metadata["gpuserve_fixture"] == "gpuserve triton_standin test fixture"


def test_rollback_stops_and_disables_the_new_stack(host, rollback):
    for unit in ("gpuserve-gateway.service", "vllm@phi-2.service"):
        service = host.service(unit)
        assert not service.is_running, unit
    assert not host.service("gpuserve-gateway.service").is_enabled


def test_gate_blocks_decommission_while_the_new_stack_is_down(host, hv, blocked):
    output = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0
    assert "GATE CLOSED on triton_decommission-debian12" in output
    assert "/ready answered -1" in output or "/ready answered 502" in output
    # Nothing changed: Triton still runs and no second backup was made.
    assert [state for _name, state in compose_containers(host, hv["project"], "triton")] == [
        "running"
    ]
    assert host.check_output("ls %s | wc -l", BACKUP_ROOT) == "1"
