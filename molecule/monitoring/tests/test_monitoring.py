"""The monitoring scenario, asked through Prometheus' own HTTP API.

Runs on the Prometheus host (group `monitoring`); the GPU host (simulator engine) is
reached through the `gpu` fixture. Intervals and `for:` durations are shortened by the
scenario's group_vars, so every wait below is seconds. The engine-kill test is last:
it stops vllm@phi-2 for the 30 s RestartSec the scenario sets, then waits for it to
come back.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GPU_HOST

testinfra_hosts = ["monitoring"]

ROOT = Path(__file__).resolve().parents[3]
PROM = "http://127.0.0.1:9090"
MODEL = "phi-2"
API_KEY = "monitoring-test-key-not-secret"
JOBS = {"prometheus", "gpuserve-gateway", "gpuserve-vllm", "gpuserve-node", "gpuserve-gpu"}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll check() until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"{what} not reached in {timeout:.0f} s; last: {last!r}")


def api(host, path: str, **params: str) -> Any:
    """GET Prometheus' HTTP API from inside the host; params are URL-encoded by curl."""
    encode = " ".join(["--data-urlencode %s"] * len(params))
    result = host.run(
        f"curl -sS --get {encode} {PROM}{path}", *[f"{k}={v}" for k, v in params.items()]
    )
    assert result.rc == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "success", body
    return body["data"]


def query(host, expr: str) -> list[dict[str, Any]]:
    return api(host, "/api/v1/query", query=expr)["result"]


def firing(host, alertname: str) -> list[dict[str, Any]]:
    return [
        a
        for a in api(host, "/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]


def gpu_address(gpu) -> str:
    return gpu.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
        "ansible_default_ipv4"
    ]["address"]


def test_prometheus_is_debians_package_and_running(host):
    assert host.package("prometheus").is_installed
    assert host.service("prometheus").is_running
    assert host.service("prometheus").is_enabled


def test_generated_config_and_rules_pass_promtool_check(host):
    config = host.run("promtool check config /etc/prometheus/prometheus.yml")
    assert config.rc == 0, config.stdout + config.stderr
    rules = host.run("promtool check rules /etc/prometheus/rules/gpuserve-alerts.rules.yml")
    assert rules.rc == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 9 rules found" in rules.stdout


def test_rule_unit_tests_pass_with_the_containers_promtool(host):
    """promtool test rules on the rules rendered with the role's DEFAULT durations."""
    spec = importlib.util.spec_from_file_location(
        "rules_helper", ROOT / "tests/unit/test_monitoring_rules.py"
    )
    assert spec
    assert spec.loader
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    tests = (ROOT / "roles/monitoring/files/rules-tests/gpuserve-alerts.test.yml").read_text()
    host.run("mkdir -p /tmp/rules-test")
    for name, content in (
        ("gpuserve-alerts.rules.yml", helper.render_rules()),
        ("gpuserve-alerts.test.yml", tests),
    ):
        # base64: the rules hold {{ $labels }} templates that must reach the file untouched
        encoded = base64.b64encode(content.encode()).decode()
        copied = host.run("echo %s | base64 -d > %s", encoded, f"/tmp/rules-test/{name}")
        assert copied.rc == 0, copied.stderr
    result = host.run("cd /tmp/rules-test && promtool test rules gpuserve-alerts.test.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_target_is_up(host, gpu):
    def all_up() -> list[dict[str, Any]] | None:
        targets = api(host, "/api/v1/targets", state="active")["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        if jobs == JOBS and all(t["health"] == "up" for t in targets):
            return targets
        return None

    targets = wait_for(all_up, 60, "every target healthy")
    by_job = {t["labels"]["job"]: t for t in targets}
    assert len(targets) == len(JOBS)
    assert by_job["gpuserve-vllm"]["labels"]["model"] == MODEL
    assert by_job["gpuserve-vllm"]["scrapeUrl"] == (
        f"http://{gpu_address(gpu)}:9180/metrics/vllm/{MODEL}"
    )
    for job in JOBS - {"prometheus"}:
        assert by_job[job]["labels"]["instance"] == GPU_HOST
    # Debian's package starts Prometheus with its own config (job "node") before the role
    # replaces it; that job's last `up` stays queryable for 5 min, so select our jobs.
    up = query(host, 'up{job=~"prometheus|gpuserve-.+"}')
    assert {r["metric"]["job"] for r in up} == JOBS
    assert {r["value"][1] for r in up} == {"1"}


def test_gateway_and_vllm_series_exist_after_requests(host, gpu):
    body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 4})
    for _ in range(5):
        result = gpu.run(
            "curl -sk -o /dev/null -w '%%{http_code}' https://127.0.0.1/v1/completions "
            "-H 'Content-Type: application/json' -H %s -d %s",
            f"Authorization: Bearer {API_KEY}",
            body,
        )
        assert result.stdout == "200", result.stdout + result.stderr

    def counted() -> list[dict[str, Any]]:
        return query(
            host,
            f'sum(gpuserve_gateway_requests_total{{route="/v1/completions", status="200", '
            f'instance="{GPU_HOST}"}}) >= 5',
        )

    wait_for(counted, 30, "5 completions counted by the gateway")
    for expr in (
        f'vllm:num_requests_running{{model_name="{MODEL}", instance="{GPU_HOST}"}}',
        f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}}',
        f'vllm:generation_tokens_total{{model_name="{MODEL}"}} > 0',
        f'vllm:time_to_first_token_seconds_count{{model_name="{MODEL}"}} >= 5',
        f'gpuserve_gateway_time_to_first_byte_seconds_count{{model="{MODEL}"}} >= 5',
        'node_memory_MemAvailable_bytes{job="gpuserve-node"}',
    ):
        assert wait_for(lambda e=expr: query(host, e), 15, expr)


def test_gpu_less_host_reports_nvml_down_and_its_alert_fires(host):
    """No GPU in CI: the exporter answers (target up) with gpuserve_nvml_up 0."""
    nvml = query(host, f'gpuserve_nvml_up{{instance="{GPU_HOST}"}}')
    assert [r["value"][1] for r in nvml] == ["0"]
    alerts = wait_for(
        lambda: firing(host, "GpuserveGpuMetricsUnavailable"), 30, "NVML alert firing"
    )
    assert alerts[0]["labels"]["instance"] == GPU_HOST


def test_scrape_port_answers_the_monitoring_host_only(host, gpu):
    address = gpu_address(gpu)
    from_monitoring = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' http://{address}:9180/metrics/node"
    )
    assert from_monitoring.stdout == "200"
    # The GPU host's own non-loopback address is not in the allowlist.
    from_elsewhere = gpu.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' http://{address}:9180/metrics/node"
    )
    assert from_elsewhere.stdout == "403"
    conf = gpu.file("/etc/nginx/conf.d/gpuserve-metrics.conf").content_string
    geo = re.search(r"geo \$gpuserve_metrics_client_allowed \{(.*?)\}", conf, re.S)
    assert geo, conf
    allowed = re.findall(r"^\s*(\S+) 1;", geo.group(1), re.M)
    monitoring_ip = host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
        "ansible_default_ipv4"
    ]["address"]
    assert sorted(allowed) == sorted(["127.0.0.1", "::1", monitoring_ip])
    assert re.search(r"^\s*default 0;", geo.group(1), re.M)


@pytest.mark.parametrize("path", ["/", "/nope", "/metrics/vllm/unknown", "/metrics/node"])
def test_scrape_port_refuses_other_addresses_before_any_answer(gpu, path):
    # Issue 18: the 404 of an unknown path listed every metrics path (model names) to any
    # address; the allowlist now answers first, for every path, with a bare 403.
    address = gpu_address(gpu)
    out = gpu.run(f"curl -s -w ' %{{http_code}}' http://{address}:9180{path}").stdout
    assert out.endswith(" 403"), out
    assert MODEL not in out, out
    assert "/metrics/" not in out, out


def test_scrape_port_lists_its_paths_to_the_monitoring_host(host, gpu):
    out = host.run(f"curl -s -w ' %{{http_code}}' http://{gpu_address(gpu)}:9180/nope").stdout
    assert out.endswith(" 404"), out
    assert "/metrics/node" in out, out


@pytest.mark.parametrize(("port", "what"), [(9100, "node exporter"), (9835, "NVML exporter")])
def test_metric_sources_listen_on_loopback_only(gpu, port, what):
    assert gpu.socket(f"tcp://127.0.0.1:{port}").is_listening, what
    assert not gpu.socket(f"tcp://0.0.0.0:{port}").is_listening, what
    assert not gpu.socket(f"tcp://:::{port}").is_listening, what


def test_nvml_exporter_runs_hardened_as_its_own_user(gpu):
    unit = "gpuserve-nvml-exporter"
    service = gpu.service(unit)
    if not service.is_running:
        pytest.fail(gpu.run(f"journalctl -u {unit} -n 30 --no-pager").stdout)
    assert service.is_enabled
    shown = gpu.run(
        f"systemctl show {unit} -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome"
    ).stdout.split()
    assert dict(line.split("=", 1) for line in shown) == {
        "User": "gpuserve-exporter",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
    }
    exposure = gpu.run(f"systemd-analyze security {unit} --no-pager").stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", exposure).group(1))
    assert score <= 3.0, exposure


def test_nvml_exporter_venv_has_the_pinned_packages(gpu):
    defaults = yaml.safe_load((ROOT / "roles/monitoring/defaults/main.yml").read_text())
    freeze = gpu.run("/opt/gpuserve/nvml-exporter/venv/bin/pip freeze").stdout.split()
    installed = {line.lower().replace("_", "-") for line in freeze}
    for pkg in defaults["monitoring_nvml_exporter_packages"]:
        assert f"{pkg['name']}=={pkg['version']}" in installed


def exposure(host, unit: str) -> float:
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


# Debian's units with the collection's drop-ins (issue 18: every unit <= 5.0; Debian's
# defaults score 9.2 for the node exporter and 9.6 for nginx). prometheus.service is
# Debian's own, unchanged (3.9).
@pytest.mark.parametrize(
    ("where", "unit"),
    [
        ("gpu", "prometheus-node-exporter.service"),
        ("gpu", "nginx.service"),
        ("prometheus", "prometheus.service"),
    ],
)
def test_distro_units_score_at_most_5(host, gpu, where, unit):
    target = gpu if where == "gpu" else host
    level = exposure(target, unit)
    print(f"{unit}: exposure {level}")
    assert level <= 5.0


def test_hardened_node_exporter_keeps_its_collectors(gpu):
    # The drop-in's differences exist for these: netdev (netlink), timex (adjtimex),
    # systemd (D-Bus), filesystem (/home read-only, not hidden).
    dropin = "/etc/systemd/system/prometheus-node-exporter.service.d/gpuserve-hardening.conf"
    assert gpu.file(dropin).exists
    metrics = gpu.check_output("curl -sS http://127.0.0.1:9100/metrics")
    for collector in ("netdev", "timex", "systemd", "filesystem", "cpu", "meminfo"):
        line = f'node_scrape_collector_success{{collector="{collector}"}} 1'
        assert line in metrics, collector


def test_node_exporter_is_the_distro_package(gpu):
    assert gpu.package("prometheus-node-exporter").is_installed
    assert (
        "--web.listen-address=127.0.0.1:9100"
        in gpu.file("/etc/default/prometheus-node-exporter").content_string
    )


def test_controller_export_holds_the_drop_in_files(gpu):
    export = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "monitoring-export"
    snippet = yaml.safe_load((export / "prometheus-scrape-gpuserve.yml").read_text())
    assert [j["job_name"] for j in snippet["scrape_configs"]] == [
        "gpuserve-gateway",
        "gpuserve-vllm",
        "gpuserve-node",
        "gpuserve-gpu",
    ]
    vllm_sd = yaml.safe_load((export / "file_sd/gpuserve-vllm.yml").read_text())
    assert vllm_sd == [
        {"targets": [f"{gpu_address(gpu)}:9180"], "labels": {"instance": GPU_HOST, "model": MODEL}}
    ]
    assert (export / "rules/gpuserve-alerts.rules.yml").is_file()
    board = json.loads((export / "dashboards/gpuserve-overview.json").read_text())
    assert board["uid"] == "gpuserve-overview"


def test_dashboard_serving_queries_return_data(host):
    board = json.loads(
        (ROOT / "roles/monitoring/files/dashboards/gpuserve-overview.json").read_text()
    )
    wanted = {
        "Request rate",
        "Time to first token",
        "Tokens/s",
        "Running / waiting requests",
        "KV cache usage",
        "In flight (gateway)",
    }
    for panel in board["panels"]:
        if panel["title"] not in wanted:
            continue
        expr = panel["targets"][0]["expr"].replace("$__rate_interval", "5m")
        expr = re.sub(r"\$(instance|model)\b", ".*", expr)
        assert query(host, expr), f"{panel['title']}: {expr} returned nothing"


def test_killed_engine_fires_engine_not_ready_then_recovers(host, gpu):
    unit = f"vllm@{MODEL}.service"
    killed = gpu.run(f"systemctl kill -s KILL {unit}")
    assert killed.rc == 0, killed.stderr
    alerts = wait_for(lambda: firing(host, "GpuserveEngineNotReady"), 25, "engine alert firing")
    assert alerts[0]["labels"]["model"] == MODEL
    assert alerts[0]["labels"]["instance"] == GPU_HOST
    # Restart=on-failure brings it back (RestartSec 30 in this scenario); the alert clears.
    wait_for(
        lambda: query(host, f'up{{job="gpuserve-vllm", model="{MODEL}"}} == 1'),
        90,
        "vLLM target up again",
    )
    wait_for(lambda: not firing(host, "GpuserveEngineNotReady"), 30, "engine alert cleared")
