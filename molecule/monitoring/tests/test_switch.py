"""playbooks/serve.yml alone (no monitoring.yml after it) moves phi-2 to a new instance, as a
blue/green rollout does: the scrape proxy's /metrics/vllm/phi-2 follows it to the new unit's
socket, the allowlisted server block stays as monitoring.yml wrote it, and Prometheus scrapes the
model from the new instance. Runs after test_monitoring.py (file order): it renames the unit."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml
from conftest import GPU_HOST
from test_monitoring import MODEL, gpu_address, query, wait_for

testinfra_hosts = ["monitoring"]

ROOT = Path(__file__).resolve().parents[3]
SERVER_BLOCK = "/etc/nginx/conf.d/gpuserve-metrics.conf"
VLLM_LOCATIONS = "/etc/nginx/conf.d/gpuserve-metrics-vllm.locations"


def test_a_switch_by_serve_yml_alone_moves_the_models_metrics(request, host, gpu) -> None:
    defaults = yaml.safe_load((ROOT / "roles/vllm_service/defaults/main.yml").read_text())
    (entry,) = defaults["vllm_service_models"]
    assert entry["name"] == MODEL
    switched = [entry | {"name": f"{MODEL}-b", "served_model_name": MODEL}]
    server_block = gpu.file(SERVER_BLOCK).sha256sum
    assert f"/run/vllm/{MODEL}.sock" in gpu.file(VLLM_LOCATIONS).content_string

    run = subprocess.run(
        ["ansible-playbook", "-i", request.config.option.ansible_inventory,
         "--extra-vars", json.dumps({"vllm_service_models": switched}),
         str(ROOT / "playbooks/serve.yml")],
        capture_output=True, text=True, check=False, timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    switched_at = time.time()

    assert gpu.service(f"vllm@{MODEL}-b.service").is_running
    assert not gpu.service(f"vllm@{MODEL}.service").is_running
    locations = gpu.file(VLLM_LOCATIONS).content_string
    assert f"/run/vllm/{MODEL}-b.sock" in locations, locations
    assert f"/run/vllm/{MODEL}.sock" not in locations, locations
    # serve.yml knows no monitoring host's address: the allowlist is monitoring.yml's, untouched.
    assert gpu.file(SERVER_BLOCK).sha256sum == server_block

    # The monitoring host (allowlisted) gets the new instance's metrics under the model's path.
    out = host.run(
        f"curl -s -w ' %{{http_code}}' http://{gpu_address(gpu)}:9180/metrics/vllm/{MODEL}"
    ).stdout
    assert out.endswith(" 200"), out[-300:]
    assert "vllm:" in out, out[:300]
    # Prometheus scrapes it there too: a successful scrape after the switch.
    wait_for(
        lambda: [
            r
            for r in query(host, f'timestamp(up{{job="gpuserve-vllm", model="{MODEL}"}} == 1)')
            if float(r["value"][1]) > switched_at and r["metric"]["instance"] == GPU_HOST
        ],
        30,
        "a scrape of the switched model after the switch",
    )
