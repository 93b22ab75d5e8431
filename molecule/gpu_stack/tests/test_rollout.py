"""playbooks/gpu_stack.yml across the fleet: batches, the drain before the reboot, a failing
host that stops the rollout, and the serving gate at the end of each batch.

Debian 12 serves (prepare ran playbooks/serve.yml there: simulator engine, nginx, gateway);
Debian 13 serves nothing. The tests run in file order; the second starts from the state the
first left.

What a container cannot do, and what these tests do instead:
- It cannot reboot (no kernel of its own), and the role sees that and skips the reboot. The
  first test makes the role see a real machine on Debian 12 with a TEST-ONLY override
  (`ansible_virtualization_role=host` as an extra var, which beats the gathered fact; product
  code has no switch for it), and takes that host's `shutdown` command away (test fixture: a
  host whose reboot fails). So the role really drains the serving stack and really runs
  ansible.builtin.reboot, which fails on that host: the failing host of the rollout.
- NOT exercised: a reboot that happens and the wait for the host to come back (the drained
  stack then comes back on its own at boot; the second test starts it from the play instead,
  through the same restore tasks).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import testinfra

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "gpu_stack")
FIRST, SECOND = f"{SCENARIO}-debian12", f"{SCENARIO}-debian13"
# playbooks/validate_inventory.yml: the first play of every stage playbook.
INVENTORY_CHECK = "Check the inventory of every stage before any host changes"
KEY = "ci-test-key-0123456789"
DRAIN_TIMEOUT = 10
SERVING_UNITS = [
    "nginx.service",
    "gpuserve-gateway.socket",
    "gpuserve-gateway.service",
    "vllm@model-a.service",
]
REBOOT_TASK = "gpuserve.vllm.nvidia_driver : Reboot to load the new kernel module"
DRAIN = "gpuserve.vllm.serving_drain : "
DRAIN_TASKS = [
    DRAIN + "Stop accepting new connections at nginx (graceful quit, running requests go on)",
    DRAIN + "Wait for the running requests to finish (nginx exits after the last one)",
    DRAIN + "Report the requests cut at the drain timeout",
    DRAIN + "Cut the requests still running at the drain timeout (nginx fast shutdown)",
    DRAIN + "Stop nginx, the gateway (its socket first) and the model instances",
]
STOP_ACCEPTING, WAIT = DRAIN_TASKS[0], DRAIN_TASKS[1]
RESTORE_START = (
    "gpuserve.vllm.serving_drain : Start the model instances, then the gateway and nginx"
)
RESTORE_GATE = "gpuserve.vllm.serving_drain : Gate on /ready through nginx before the next batch"
NOTHING_TO_RESTORE = (
    "gpuserve.vllm.serving_drain : Report that this host has no serving stack to bring back"
)


class JsonRun:
    """One ansible-playbook run, read through the ansible.posix.json callback."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        start = proc.stdout.find("{")
        assert start >= 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        self.doc, _ = json.JSONDecoder().raw_decode(proc.stdout, start)

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

    def ran(self, host: str) -> list[tuple[str, dict]]:
        """(task name, result) of every task that ran on `host`, in order."""
        return [
            (t["task"]["name"], t["hosts"][host])
            for p in self.doc["plays"]
            for t in p["tasks"]
            if host in t["hosts"] and not t["hosts"][host].get("skipped")
        ]

    def result(self, host: str, task: str) -> dict:
        (res,) = [r for name, r in self.ran(host) if name == task]
        return res


def gpu_stack(tmp_path: Path, extra: dict, *args: str) -> JsonRun:
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(Path(INVENTORY).parent),
         str(ROOT / "playbooks/gpu_stack.yml"), "-e", f"@{vars_file}", *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
    )  # fmt: skip
    return JsonRun(proc)


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def active(host, unit: str) -> str:
    return host.run(f"systemctl is-active {unit}").stdout.strip()


def epoch(ansible_time: str) -> float:
    """A command result's start/end ('2026-12-02 00:14:37.123456', the host's UTC clock)."""
    return datetime.fromisoformat(ansible_time).replace(tzinfo=UTC).timestamp()


def timed_lines(host, path: str) -> list[tuple[float, str]]:
    out = []
    for line in host.file(path).content_string.splitlines():
        stamp, _, text = line.partition(" ")
        out.append((float(stamp), text))
    return out


@pytest.fixture(scope="module")
def hosts():
    return node(FIRST), node(SECOND)


def test_the_failing_host_is_drained_before_its_reboot_and_stops_the_rollout(hosts, tmp_path):
    first, second = hosts
    for unit in SERVING_UNITS:
        assert active(first, unit) == "active", unit
    second_dpkg = second.check_output("stat -c %Y /var/lib/dpkg/status")
    # A driver to install (so the role decides on a reboot) and a reboot that fails (fixture).
    shutdown = first.check_output("command -v shutdown")
    first.check_output(
        "apt-get remove -y -qq $(dpkg-query -W -f '${Package}\\n' 'cuda-drivers-[0-9]*' "
        f"nvidia-kernel-open-dkms) && mv {shutdown} /root/shutdown.moved-by-test"
    )
    # A long stream through nginx (4000 tokens at 100 ms: 400 s) and a /ready probe, both
    # logging with timestamps, run in the host while the playbook drains it.
    body = json.dumps(
        {"model": "chat", "prompt": "hi", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    )
    curl = "curl -s --cacert /etc/nginx/tls/gpuserve.crt"
    stream = (
        f"{curl} -N -H 'Authorization: Bearer {KEY}' -H 'Content-Type: application/json' "
        f"-d '{body}' https://localhost/v1/completions | "
        'while IFS= read -r l; do [ -n "$l" ] && echo "$(date +%s.%N) $l"; done'
        " > /tmp/drain-stream.log"
    )
    probe = (
        f"while true; do echo \"$(date +%s.%N) $({curl} -o /dev/null -w '%{{http_code}}' "
        'https://localhost/ready)"; sleep 0.5; done > /tmp/drain-probe.log'
    )
    for unit, script in (("drain-stream", stream), ("drain-probe", probe)):
        first.run(f"cat > /tmp/{unit}.sh <<'EOF'\n{script}\nEOF")
        first.check_output(f"systemd-run --collect --unit={unit} /bin/sh /tmp/{unit}.sh")
    try:
        run = gpu_stack(
            tmp_path,
            {
                # TEST-ONLY override: Debian 12 looks like a real machine to the role.
                "ansible_virtualization_role": (
                    f"{{{{ 'host' if inventory_hostname == '{FIRST}' "
                    "else ansible_facts.virtualization_role }}"
                ),
                "nvidia_driver_kernel_headers": False,
                "serving_drain_timeout": DRAIN_TIMEOUT,
            },
        )
    finally:
        first.run("systemctl stop drain-probe drain-stream")
        first.run(f"mv /root/shutdown.moved-by-test {shutdown}")
    # Serial 1, max_fail_percentage 0: the first batch failed, the second never started.
    assert run.returncode != 0
    assert run.batches() == [{FIRST}]
    assert run.untouched(SECOND), run.doc["stats"]
    assert second.check_output("stat -c %Y /var/lib/dpkg/status") == second_dpkg
    # On the first host: the drain, then the reboot, which failed and was the last task.
    names = [name for name, _ in run.ran(FIRST)]
    assert names[-1] == REBOOT_TASK
    assert run.result(FIRST, REBOOT_TASK)["failed"]
    assert "shutdown" in run.result(FIRST, REBOOT_TASK)["msg"]
    assert [n for n in names if n in DRAIN_TASKS] == DRAIN_TASKS
    assert names.index(DRAIN_TASKS[-1]) < names.index(REBOOT_TASK)
    # What the drain did, in the host: the units were down before the reboot was tried.
    for unit in SERVING_UNITS:
        assert active(first, unit) == "inactive", unit
    quit_at = epoch(run.result(FIRST, STOP_ACCEPTING)["end"])
    wait = run.result(FIRST, WAIT)
    assert wait["rc"] == 124, "the 400 s stream outlived the drain timeout"
    cut_at = epoch(wait["end"])
    assert cut_at - quit_at >= DRAIN_TIMEOUT - 1
    stream = timed_lines(first, "/tmp/drain-stream.log")
    probe = timed_lines(first, "/tmp/drain-probe.log")
    # Before the drain the host answered /ready; after nginx stopped accepting it refused
    # new connections (curl's 000)...
    assert any(code == "200" for t, code in probe if t < quit_at)
    refused = [t for t, code in probe if t > quit_at + 1]
    assert refused
    assert all(code == "000" for t, code in probe if t > quit_at + 1)
    # ...while the stream that was already running kept getting tokens until the timeout,
    # then was cut (no [DONE]).
    assert any(t > quit_at + DRAIN_TIMEOUT - 2 for t, _ in stream), stream[-3:]
    assert all(text.startswith("data: {") for _, text in stream)


def test_the_rerun_brings_the_drained_host_back_and_goes_host_by_host(hosts, tmp_path):
    first, _ = hosts
    # cuda_toolkit and nccl are checked by the converge; skipped here to save CI time.
    run = gpu_stack(tmp_path, {}, "--skip-tags", "cuda_toolkit,nccl")
    assert run.returncode == 0, json.dumps(run.doc["stats"])
    # serial 1: Debian 12's whole batch, its serving gate included, before Debian 13 starts.
    assert run.batches() == [{FIRST}, {SECOND}]
    started = run.result(FIRST, RESTORE_START)
    assert started["changed"]
    assert {r["item"] for r in started["results"] if r["changed"]} == set(SERVING_UNITS)
    assert run.result(FIRST, RESTORE_GATE)["status"] == 200
    assert NOTHING_TO_RESTORE in [name for name, _ in run.ran(SECOND)]
    for unit in SERVING_UNITS:
        assert active(first, unit) == "active", unit
    ready = first.run(
        "curl -s -o /dev/null -w '%{http_code}' --cacert /etc/nginx/tls/gpuserve.crt "
        "https://localhost/ready"
    )
    assert ready.stdout == "200"
