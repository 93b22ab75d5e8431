"""The monitoring role's Prometheus rules and Grafana dashboard, checked with promtool.

The rules template is rendered the way Ansible renders it (trim_blocks) with the role's
defaults, then `promtool check rules` and `promtool test rules` run on it
(roles/monitoring/files/rules-tests/). promtool is Debian's `prometheus` package: taken
from PATH, else unpacked once from `apt-get download prometheus` into .cache/promtool
(nothing is installed on the machine and no Prometheus service starts).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles/monitoring"
CACHE = ROOT / ".cache/promtool"
DASHBOARD = ROLE / "files/dashboards/gpuserve-overview.json"


def find_promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    unpacked = CACHE / "root/usr/bin/promtool"
    if not unpacked.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        download = ["apt-get", "download", "prometheus"]
        if subprocess.run(download, cwd=CACHE, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(download, cwd=CACHE, check=True, capture_output=True)
        deb = sorted(CACHE.glob("prometheus_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "root")], check=True)
    return str(unpacked)


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_promtool()


def role_defaults() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def render_rules(overrides: dict[str, Any] | None = None) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    context = {**role_defaults(), **(overrides or {})}
    return env.get_template("gpuserve-alerts.rules.yml.j2").render(**context)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def test_rules_with_role_defaults_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "gpuserve-alerts.rules.yml").write_text(render_rules())
    result = run([promtool, "check", "rules", "gpuserve-alerts.rules.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_rules_with_role_defaults_pass_promtool_unit_tests(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "gpuserve-alerts.rules.yml").write_text(render_rules())
    shutil.copy(ROLE / "files/rules-tests/gpuserve-alerts.test.yml", tmp_path)
    result = run([promtool, "test", "rules", "gpuserve-alerts.test.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_shortened_durations_for_tests_still_pass_promtool_check(
    promtool: str, tmp_path: Path
) -> None:
    short = dict.fromkeys(role_defaults()["monitoring_alert_for"], "5s")
    rules = render_rules({"monitoring_alert_for": short, "monitoring_alert_rate_window": "30s"})
    (tmp_path / "r.yml").write_text(rules)
    result = run([promtool, "check", "rules", "r.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {
        a["for"] for g in yaml.safe_load(rules)["groups"] for a in g["rules"] if "for" in a
    } == {"5s"}


def test_every_issue_alert_exists() -> None:
    names = {a["alert"] for g in yaml.safe_load(render_rules())["groups"] for a in g["rules"]}
    assert names == {
        "GpuserveTargetDown",
        "GpuserveEngineNotReady",
        "GpuserveGpuMetricsUnavailable",
        "GpuserveHighErrorRatio",
        "GpuserveTtftP95OverBudget",
        "GpuserveKvCacheSaturated",
        "GpuserveGpuHot",
        "GpuserveGpuXidError",
        "GpuserveGpuUncorrectableEcc",
    }


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = {title for title, _expr in dashboard_exprs()}
    for wanted in (
        "Request rate",
        "Error ratio",
        "Time to first token",
        "Inter-token latency",
        "Tokens/s",
        "Running / waiting requests",
        "KV cache usage",
        "GPU utilisation",
        "GPU memory used",
        "GPU temperature",
    ):
        assert wanted in titles


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, loads as a recording rule."""
    rules = []
    for n, (_title, expr) in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "1m")
        concrete = re.sub(r"\$(instance|model)\b", ".*", concrete)
        assert "$" not in concrete, f"unfilled Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:q{n}", "expr": concrete})
    (tmp_path / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    result = run([promtool, "check", "rules", "q.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_a_datasource_variable_for_import() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "gpuserve-overview"
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[0] == "datasource"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
