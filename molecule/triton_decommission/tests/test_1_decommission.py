"""After converge (decommission) and idempotence: Triton gone, the rest intact, port handed over."""

import hashlib
import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import BACKUP_ROOT, FIXTURE_COMPOSE, HANDOVER_CONF, IMAGE, compose_containers


def test_triton_container_is_removed(host, hv):
    assert compose_containers(host, hv["project"], "triton") == []


def test_unrelated_compose_service_still_runs(host, hv):
    [[_name, state]] = compose_containers(host, hv["project"], "log-shipper")
    assert state == "running"


def _expected_compose():
    """The fixture file minus the triton block (its header comment through its last line)."""
    lines = FIXTURE_COMPOSE.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  # Triton serving Phi-2"))
    end = next(i for i, line in enumerate(lines) if line.startswith("  # Unrelated to Triton"))
    return "".join(lines[:start] + lines[end:])


def test_compose_file_keeps_the_unrelated_service_and_every_comment(host, hv):
    content = host.file(f"{hv['project_dir']}/docker-compose.yml").content_string
    assert "  triton:\n" not in content
    assert content == _expected_compose()


def _backups(host):
    out = host.check_output("find %s -mindepth 1 -maxdepth 1 -type d -printf '%%f\\n'", BACKUP_ROOT)
    return sorted(out.split())


@pytest.fixture
def manifest(host):
    backups = _backups(host)
    assert len(backups) == 1, f"one backup expected after converge + idempotence, found {backups}"
    return f"{BACKUP_ROOT}/{backups[0]}", json.loads(
        host.file(f"{BACKUP_ROOT}/{backups[0]}/manifest.json").content_string
    )


def test_backup_manifest_lists_container_image_compose_and_model_repository(host, hv, manifest):
    _path, data = manifest
    [container] = data["containers"]
    assert container["compose"]["project"] == hv["project"]
    assert container["compose"]["service"] == "triton"
    assert container["image"] == IMAGE
    assert container["http_ports"] == [
        {
            "container_port": 8000,
            "proto": "tcp",
            "host_ip": "127.0.0.1",
            "host_port": hv["http_port"],
        }
    ]
    assert container["grpc_ports"] == [
        {
            "container_port": 8001,
            "proto": "tcp",
            "host_ip": "127.0.0.1",
            "host_port": hv["grpc_port"],
        }
    ]
    assert data["images"][0]["reference"] == IMAGE
    assert data["images"][0]["id"].startswith("sha256:")
    [repo] = data["model_repositories"]
    assert repo["source"] == f"{hv['project_dir']}/model_repository"
    assert (repo["mode"], repo["files"]) == ("copy", 2)
    backed_up = {f["path"]: f["sha256"] for f in data["compose_files"]}
    original = hashlib.sha256(FIXTURE_COMPOSE.read_bytes()).hexdigest()
    assert backed_up[f"{hv['project_dir']}/docker-compose.yml"] == original
    assert f"{hv['project_dir']}/.env" in backed_up


def test_backup_files_match_the_manifest_checksums(host, manifest):
    path, data = manifest
    assert {"containers/" + data["containers"][0]["name"] + ".json"} <= set(data["files"])
    copies = [rel for rel in data["files"] if rel.startswith("model_repository/")]
    assert sorted(rel.split("/", 2)[2] for rel in copies if rel.count("/") >= 2) == [
        "phi-2/1/model.json",
        "phi-2/config.pbtxt",
    ]
    for rel, sha in data["files"].items():
        assert host.check_output("sha256sum %s", f"{path}/{rel}").split()[0] == sha, rel
    inspect = json.loads(
        host.file(f"{path}/containers/{data['containers'][0]['name']}.json").content_string
    )
    assert inspect["Id"] == data["containers"][0]["id"]


def test_nginx_listens_on_tritons_old_port(host, hv):
    sockets = host.check_output(f"ss -Hltnp 'sport = :{hv['http_port']}'")
    assert f"127.0.0.1:{hv['http_port']}" in sockets
    assert '"nginx"' in sockets
    assert host.file(HANDOVER_CONF).mode == 0o640


def test_tritonclient_on_the_old_port_reaches_the_gateway(hv):
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{hv['http_port']}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("phi-2")
    assert client.get_server_metadata()["name"] == "gpuserve-gateway"


def test_triton_generate_on_the_old_port_is_answered_by_the_new_stack(hv):
    response = httpx.post(
        f"http://127.0.0.1:{hv['http_port']}/v2/models/phi-2/generate",
        json={"text_input": "The capital of France is", "parameters": {"max_tokens": 8}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "phi-2"
    assert body["text_output"]
    assert "[triton stand-in]" not in body["text_output"]


def test_nginx_listens_on_tritons_old_grpc_port(host, hv):
    sockets = host.check_output(f"ss -Hltnp 'sport = :{hv['grpc_port']}'")
    assert f"127.0.0.1:{hv['grpc_port']}" in sockets
    assert '"nginx"' in sockets


def test_tritonclient_grpc_on_the_old_port_is_answered_by_the_new_stack(hv):
    # No key: like the HTTP handover, nginx adds the migration key for old clients.
    client = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{hv['grpc_port']}")
    try:
        assert client.is_server_ready()
        assert client.get_server_metadata().name == "gpuserve-gateway"
        text = triton_grpc.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"The capital of France is"], dtype=np.object_))
        result = client.infer("phi-2", [text], parameters={"max_tokens": 8})
        output = result.as_numpy("text_output")[0].decode()
        assert output.startswith("The capital of France is ")
        assert "[triton stand-in]" not in output
    finally:
        client.close()
