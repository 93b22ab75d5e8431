"""playbooks/serve.yml with gpuserve_runtime: compose (simulator engine, TEST/DEMO): the stack's
containers on the test machine's daemon, requests through the real nginx image, a blue/green
model switch under load, a failing switch rolled back. The files the tests read are the
project's own (docker-compose.yml, gateway.yml) and the daemon's view (docker ps/inspect)."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROJECT = "gpuserve-ci-compose"
HOST = "compose_runtime-debian13"
KEY = "ci-test-key-0123456789"
COMPOSE_FILE = "/etc/gpuserve/compose/docker-compose.yml"
MODEL_V1 = {
    "name": "tiny-v1",
    "served_model_name": "tiny",
    "source": {"type": "local", "path": "/srv/gpuserve-fixtures/tiny_model/model", "copy": True},
    "revision": "v1",
    "max_model_len": 2048,
    "sim_args": {"ttft-ms": 5, "itl-ms": 2},
}
# 5 ms per token: tests/test_drain.py's 2000-token stream runs 10 s, through the drain.
MODEL_V2 = MODEL_V1 | {"name": "tiny-v2", "revision": "v2", "sim_args": {"ttft-ms": 5, "itl-ms": 5}}
# Never healthy: /health answers 503 for 600 s, longer than its health_timeout.
MODEL_STUCK = MODEL_V1 | {
    "name": "stuck",
    "served_model_name": "stuck",
    "revision": "s1",
    "health_timeout": 10,
    "sim_args": {"startup-seconds": 600},
}


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def services() -> dict[str, str]:
    """Compose service -> container status, as the daemon reports them."""
    out = docker(
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        "--format",
        '{{.Label "com.docker.compose.service"}}\t{{.Status}}',
    )
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def host_ip() -> str:
    return docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", HOST
    ).strip()


def through_nginx(
    path: str, payload: dict | None = None, key: str | None = KEY
) -> tuple[int, dict]:
    """(status, JSON body) of a request through nginx (the host container's address, port 443)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the self-signed certificate of nginx_proxy's default mode
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    headers = {"Content-Type": "application/json"} | auth
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(f"https://{host_ip()}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def serve(request_, models: list[dict]) -> subprocess.CompletedProcess[str]:
    """playbooks/serve.yml on the scenario's host with `models` as its models list."""
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            request_.config.option.ansible_inventory,
            "--extra-vars",
            json.dumps({"ci_models": models}),
            str(ROOT / "playbooks/serve.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )


def recap_changed(out: str) -> int:
    m = re.search(r"^\S+\s+: ok=\d+\s+changed=(\d+)", out, re.M)
    assert m, out[-3000:]
    return int(m.group(1))


def test_every_service_runs_and_is_healthy() -> None:
    now = services()
    assert set(now) == {"vllm-tiny-v1", "gateway", "nginx"}, now
    for name, status in now.items():
        assert status.startswith("Up"), (name, status)
        assert "(healthy)" in status, (name, status)


def test_the_project_runs_the_built_images_and_the_rendered_configs(host) -> None:
    record = json.loads(host.file("/etc/gpuserve/images.json").content_string)["images"]
    project = yaml.safe_load(host.file(COMPOSE_FILE).content_string)["services"]
    assert project["vllm-tiny-v1"]["image"] == record["simulator"]["ref"]
    assert project["gateway"]["image"] == record["gateway"]["ref"]
    assert project["nginx"]["image"] == record["nginx"]["ref"]
    # nginx runs the nginx_proxy role's own nginx.conf (njs access-log filter included).
    conf = docker("exec", f"{PROJECT}-nginx-1", "cat", "/etc/nginx/nginx.conf")
    assert conf == host.file("/etc/nginx/nginx.conf").content_string
    assert "js_import gpuserve_response" in conf
    # No nginx package on the host: the compose runtime's nginx is the container's.
    assert not host.package("nginx").is_installed
    assert not host.exists("nginx")


def test_a_completion_through_nginx() -> None:
    status, body = through_nginx(
        "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4}
    )
    assert status == 200, body
    assert body["model"] == "tiny"
    assert body["choices"][0]["text"]
    status, body = through_nginx("/v1/models", key=None)
    assert status == 401, body


def test_only_nginx_listens_beyond_loopback(host) -> None:
    listeners = [line.split()[3] for line in host.check_output("ss -Hltn").splitlines()]
    outside = [a for a in listeners if a.rsplit(":", 1)[0].strip("[]") not in ("127.0.0.1", "::1")]
    assert outside, listeners
    # nginx_proxy's ports and monitoring's scrape port, all nginx's.
    assert {a.rsplit(":", 1)[1] for a in outside} <= {"80", "443", "8443", "9180"}, outside
    assert "127.0.0.1:8080" in listeners  # the gateway, loopback only
    assert "127.0.0.1:9100" in listeners  # the node exporter (a host service), loopback only


VLLM_LOCATIONS = "/etc/nginx/conf.d/gpuserve-metrics-vllm.locations"
SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:9180" + sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def test_monitoring_serves_every_source_from_the_compose_nginx(host) -> None:
    """monitoring.yml under compose: its server block is in the compose nginx (the container's
    nginx -T shows it), every proxied source answers on loopback with its metrics, and an
    address outside the allowlist gets 403."""
    conf_path = "/etc/nginx/conf.d/gpuserve-metrics.conf"
    dump = docker("exec", f"{PROJECT}-nginx-1", "nginx", "-T")
    assert f"# configuration file {conf_path}:" in dump
    assert f"# configuration file {VLLM_LOCATIONS}:" in dump  # included by the server block
    paths = re.findall(
        r"location = (/metrics/\S+) \{",
        host.file(conf_path).content_string + host.file(VLLM_LOCATIONS).content_string,
    )
    assert set(paths) == {"/metrics/gateway", "/metrics/node", "/metrics/vllm/tiny"}, paths
    expected = {"/metrics/gateway": "gpuserve_gateway_", "/metrics/node": "node_"}
    for path in paths:
        # The host's loopback (allowed): nginx's container shares the host's network namespace.
        body = host.check_output("python3 -c %s %s", SCRAPE, path)
        assert expected.get(path, "vllm:") in body, (path, body[:300])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{host_ip()}:9180/metrics/node", timeout=10)
    assert refused.value.code == 403


def test_an_access_log_line_per_request_on_the_host(host) -> None:
    through_nginx("/v1/models")
    lines = host.file("/var/log/nginx/gpuserve-access.json").content_string.splitlines()
    last = json.loads(lines[-1])
    assert last["uri"] == "/v1/models"
    assert last["response_end"] == "complete"


def test_a_blue_green_switch_under_load_loses_no_request(request, host) -> None:
    failures: list[object] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        while not done.is_set():
            try:
                status, body = request_ok()
                if status != 200:
                    failures.append((status, body))
            except OSError as err:  # a refused or reset connection is a lost request too
                failures.append(repr(err))
            count += 1
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        run = serve(request, [MODEL_V2])
    finally:
        done.set()
        worker.join(timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert count > 20, count
    assert failures == [], failures[:5]
    now = services()
    assert set(now) == {"vllm-tiny-v2", "gateway", "nginx"}, now
    assert "(healthy)" in now["vllm-tiny-v2"]
    # The retired instance's model left the store; the new one is there.
    assert host.file("/srv/models/tiny-v2@v2").is_directory
    assert not host.file("/srv/models/tiny-v1@v1").exists
    gateway_yml = host.file("/etc/gpuserve/gateway.yml").content_string
    assert "tiny-v2" in gateway_yml
    assert "tiny-v1" not in gateway_yml
    # monitoring's scrape proxy followed the switch (serve.yml alone, no monitoring.yml): the
    # model's metrics come from the new engine's socket, not the retired one's (a 502).
    proxy = host.file(VLLM_LOCATIONS).content_string
    assert "tiny-v2.sock" in proxy, proxy
    assert "tiny-v1" not in proxy, proxy
    body = host.check_output("python3 -c %s %s", SCRAPE, "/metrics/vllm/tiny")
    assert "vllm:" in body, body[:300]
    # The same models again: nothing changes.
    again = serve(request, [MODEL_V2])
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap_changed(again.stdout) == 0, again.stdout[-4000:]


def test_a_switch_whose_engine_fails_its_health_check_is_rolled_back(request, host) -> None:
    before = host.file(COMPOSE_FILE).content_string
    run = serve(request, [MODEL_V2, MODEL_STUCK])
    assert run.returncode != 0
    # Failures go to stderr (display_failed_stderr); the YAML callback wraps long messages.
    assert "Health check failed" in " ".join((run.stdout + run.stderr).split()), run.stderr[-4000:]
    now = services()
    assert set(now) == {"vllm-tiny-v2", "gateway", "nginx"}, now
    assert host.file(COMPOSE_FILE).content_string == before
    assert "stuck" not in host.file("/etc/gpuserve/gateway.yml").content_string
    status, body = request_ok()
    assert status == 200, body


def request_ok() -> tuple[int, dict]:
    return through_nginx("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
