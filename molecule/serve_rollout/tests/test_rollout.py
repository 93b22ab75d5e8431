"""Model switches (recreate with restore, blue_green) and a per-host rollout that stops at
a broken host, driven by running playbooks/serve.yml against the scenario's inventory.

The tests run in file order and each starts from the state the previous one left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
FIRST, SECOND = "serve_rollout-debian12", "serve_rollout-debian13"
# playbooks/validate_inventory.yml: the first play of every stage playbook.
INVENTORY_CHECK = "Check the inventory of every stage before any host changes"
KEY = "ci-test-key-0123456789"
GOOD = "/opt/gpuserve-fixtures/tiny_model/model"
BROKEN = "/opt/gpuserve-fixtures/tiny_model/broken"


def model(name: str, path: str, revision: str, switch: str) -> dict:
    return {
        "name": name,
        "served_model_name": "chat",
        "source": {"type": "local", "path": path},
        "revision": revision,
        "switch": switch,
        "sim_args": {"ttft-ms": 5, "itl-ms": 2},
    }


class PlaybookRun:
    """One ansible-playbook run, read through the ansible.posix.json callback (no colours,
    no line wrapping: the human-readable output depends on the terminal)."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        start = proc.stdout.find("{")
        assert start >= 0, f"no JSON output: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        # Other enabled callbacks (profile_tasks) print after the document.
        self.doc, _ = json.JSONDecoder().raw_decode(proc.stdout, start)

    def failures(self, host: str) -> int:
        return self.doc["stats"][host]["failures"]

    def failure_text(self, host: str) -> str:
        """Every message and output of the tasks that failed on `host`."""
        parts: list[str] = []
        for play in self.doc["plays"]:
            for task in play["tasks"]:
                result = task["hosts"].get(host)
                if not result or not result.get("failed"):
                    continue
                for item in [result, *(r for r in result.get("results", []) if r.get("failed"))]:
                    parts += [str(item.get(k, "")) for k in ("msg", "stdout", "stderr")]
        return "\n".join(parts)

    def batches(self) -> list[set[str]]:
        """The hosts of each serial batch, in the order they ran (after the inventory check,
        which reads every host's variables first and changes nothing)."""
        return [
            {h for task in play["tasks"] for h in task["hosts"]}
            for play in self.doc["plays"]
            if play["play"]["name"] != INVENTORY_CHECK
        ]

    def untouched(self, host: str) -> bool:
        """Only the inventory check ran on `host`, and it changed nothing."""
        stats = self.doc["stats"].get(host)
        ran = {
            play["play"]["name"]
            for play in self.doc["plays"]
            for task in play["tasks"]
            if host in task["hosts"]
        }
        return stats is None or (stats["changed"] == 0 and ran <= {INVENTORY_CHECK})


def serve(models_by_host: dict[str, list[dict]], tmp_path: Path) -> PlaybookRun:
    """Run playbooks/serve.yml (serial 1) with a models list per host."""
    extra = tmp_path / "vars.json"
    extra.write_text(
        json.dumps(
            {
                "_test_models": models_by_host,
                "vllm_service_models": "{{ _test_models[inventory_hostname] }}",
                "vllm_service_health_timeout": 40,
            }
        )
    )
    inventory_dir = str(Path(INVENTORY).parent)
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            inventory_dir,
            str(ROOT / "playbooks/serve.yml"),
            "-e",
            f"@{extra}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
    )
    run = PlaybookRun(proc)
    for host in run.doc["stats"]:
        print(host, run.doc["stats"][host], run.failure_text(host)[-3000:])
    return run


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def active(host, unit: str) -> str:
    return host.run(f"systemctl is-active {unit}").stdout.strip()


def completion_status(host) -> int:
    body = json.dumps({"model": "chat", "prompt": "hello", "max_tokens": 3})
    out = host.run(
        "curl -s -o /dev/null -w '%{http_code}' --cacert /etc/nginx/tls/gpuserve.crt "
        f"-H 'Authorization: Bearer {KEY}' -H 'Content-Type: application/json' "
        f"-d '{body}' https://localhost/v1/completions"
    )
    return int(out.stdout or 0)


def upstream_socket(host) -> str:
    cfg = host.file("/etc/gpuserve/gateway.yml").content_string
    return next(ln.split(":", 1)[1].strip() for ln in cfg.splitlines() if "uds:" in ln)


@pytest.fixture(scope="module")
def hosts():
    return node(FIRST), node(SECOND)


def test_converge_serves_model_a_on_both_hosts(hosts):
    for h in hosts:
        assert active(h, "vllm@model-a.service") == "active"
        assert completion_status(h) == 200
        assert upstream_socket(h) == "/run/vllm/model-a.sock"


def test_recreate_switch_to_a_broken_model_restores_model_a(hosts, tmp_path):
    first, _ = hosts
    broken = [model("model-x", BROKEN, "x", "recreate")]
    current = [model("model-a", GOOD, "a", "blue_green")]
    run = serve({FIRST: broken, SECOND: current}, tmp_path)
    assert run.returncode != 0
    failure = run.failure_text(FIRST)
    assert "vllm@model-x.service failed its health gate" in failure
    assert "is not valid JSON" in failure, "the journal lines explain why"
    assert "Rolled back: vllm@model-a.service" in failure
    assert "healthy again" in failure
    # The first host's failure stopped the play: the second was never touched.
    assert run.untouched(SECOND), run.doc["stats"]
    assert active(first, "vllm@model-a.service") == "active"
    assert active(first, "vllm@model-x.service") != "active"
    assert not first.file("/etc/systemd/system/vllm@model-x.service.d").exists
    assert upstream_socket(first) == "/run/vllm/model-a.sock"
    assert completion_status(first) == 200


def test_blue_green_switch_to_model_b_drops_no_request(hosts, tmp_path):
    first, _second = hosts
    # A client polling the whole time, as a transient unit inside the first host.
    script = (
        "while true; do curl -s -o /dev/null -w '%{http_code}\\n' "
        "--cacert /etc/nginx/tls/gpuserve.crt "
        f"-H 'Authorization: Bearer {KEY}' -H 'Content-Type: application/json' "
        """-d '{"model": "chat", "prompt": "hi", "max_tokens": 2}' """
        "https://localhost/v1/completions >> /tmp/switch-probe.log; sleep 0.2; done\n"
    )
    first.run("systemctl stop switch-probe; rm -f /tmp/switch-probe.log")
    first.run(f"cat > /tmp/switch-probe.sh <<'EOF'\n{script}EOF")
    first.check_output("systemd-run --collect --unit=switch-probe /bin/sh /tmp/switch-probe.sh")
    b = [model("model-b", GOOD, "b", "blue_green")]
    try:
        run = serve({FIRST: b, SECOND: b}, tmp_path)
    finally:
        first.run("systemctl stop switch-probe")
    assert run.returncode == 0, run.failure_text(FIRST) + run.failure_text(SECOND)
    for h in hosts:
        assert active(h, "vllm@model-b.service") == "active"
        assert active(h, "vllm@model-a.service") != "active"
        assert not h.file("/etc/vllm/instances/model-a.json").exists
        assert upstream_socket(h) == "/run/vllm/model-b.sock"
        assert completion_status(h) == 200
    codes = first.file("/tmp/switch-probe.log").content_string.split()
    assert len(codes) > 10
    assert set(codes) == {"200"}, codes


def test_rollout_stops_at_the_broken_second_host_and_the_first_keeps_serving(hosts, tmp_path):
    first, second = hosts
    started = time.time()
    run = serve(
        {
            FIRST: [model("model-c", GOOD, "c", "blue_green")],
            SECOND: [model("model-bad", BROKEN, "bad", "blue_green")],
        },
        tmp_path,
    )
    assert run.returncode != 0
    assert run.failures(FIRST) == 0
    assert run.failures(SECOND) == 1
    # serial 1: the first host finished its whole batch (new model, gateway, retire) first.
    assert run.batches() == [{FIRST}, {SECOND}]
    assert active(first, "vllm@model-c.service") == "active"
    assert active(first, "vllm@model-b.service") != "active"
    assert upstream_socket(first) == "/run/vllm/model-c.sock"
    assert completion_status(first) == 200
    # The second host failed its gate and kept serving model-b (blue_green never stopped it).
    assert "vllm@model-bad.service failed its health gate" in run.failure_text(SECOND)
    assert active(second, "vllm@model-b.service") == "active"
    assert not second.file("/etc/systemd/system/vllm@model-bad.service.d").exists
    assert upstream_socket(second) == "/run/vllm/model-b.sock"
    assert completion_status(second) == 200
    print(f"rollout run: {time.time() - started:.0f} s")
