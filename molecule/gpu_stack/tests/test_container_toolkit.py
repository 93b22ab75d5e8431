"""gpu_stack scenario: nvidia_container_toolkit (on with gpuserve_container_toolkit_enabled).

What these containers can and cannot prove:
- The toolkit packages are FIXTURES with NVIDIA's names, versions and relationships
  (tests/fixtures/nvidia_repo/build.py); their nvidia-ctk is the fixture's stand-in
  (nvidia_ctk.py), which edits daemon.json the way nvidia-ctk 1.17.8 does
  (tests/unit/test_nvidia_ctk_fixture.py checks that).
- Docker is a TEST FIXTURE stand-in on the Debian 13 host (group docker_hosts): a docker.service
  that runs no engine, so `docker run --runtime=nvidia` is NOT tested; the tests check the
  daemon.json the role left and that the handler restarted the unit.
- The containers have no GPU, so the CDI step must be skipped (and say so); generating a real
  spec needs a GPU host (tests/gpu/).
Idempotence (second converge changed=0) is Molecule's idempotence step of this scenario.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import testinfra
import yaml

PROJECT = Path(__file__).resolve().parents[3]
MATRIX = yaml.safe_load((PROJECT / "roles/gpuserve/defaults/main.yml").read_text())
PROFILE = MATRIX["gpuserve_version_matrix"][MATRIX["gpuserve_profile"]]
VERSION = PROFILE["container_toolkit_package_version"]
FIXTURE = json.loads((PROJECT / ".cache/nvidia_repo/repo/fixture.json").read_text())
PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
NVIDIA_RUNTIME = {"args": [], "path": "nvidia-container-runtime"}
DAEMON_JSON = "/etc/docker/daemon.json"
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "gpu_stack")
DOCKER_HOST = f"{SCENARIO}-debian13"  # molecule.yml: the only host of group docker_hosts
PLAIN_HOST = f"{SCENARIO}-debian12"

_spec = importlib.util.spec_from_file_location(
    "check_mode", PROJECT / "molecule/shared/check_mode.py"
)
assert _spec
assert _spec.loader
check_mode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_mode)


def scenario_host(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def docker_host():
    return scenario_host(DOCKER_HOST)


# --- packages --------------------------------------------------------------------------------
def test_fixture_carries_the_matrix_version_and_a_newer_decoy():
    assert FIXTURE["container_toolkit_package_version"] == VERSION
    assert FIXTURE["container_toolkit_decoy_versions"] == ["1.18.0-1"]


@pytest.mark.parametrize("package", PACKAGES)
def test_toolkit_package_is_installed_at_the_pinned_version(host, package):
    assert host.package(package).version == VERSION


def test_pin_holds_all_four_packages_against_the_newer_release(host):
    pin = host.file("/etc/apt/preferences.d/gpuserve-nvidia-container-toolkit").content_string
    assert f"Package: {' '.join(PACKAGES)}\nPin: version {VERSION}\nPin-Priority: 1001" in pin
    for package in PACKAGES:
        policy = host.run(f"apt-cache policy {package}").stdout
        assert f"Candidate: {VERSION}" in policy, policy
        assert "1.18.0-1 600" in policy, policy  # the newer build exists and is not taken


def test_nvidia_ctk_reports_the_pinned_version(host):
    out = host.run("nvidia-ctk --version")
    assert out.rc == 0, out.stderr
    assert f"NVIDIA Container Toolkit CLI version {VERSION.split('-')[0]}" in out.stdout


# --- Docker ----------------------------------------------------------------------------------
def test_daemon_json_has_the_nvidia_runtime_and_keeps_its_own_settings(docker_host):
    config = json.loads(docker_host.file(DAEMON_JSON).content_string)
    assert config == {
        "log-driver": "journald",
        "runtimes": {"nvidia": NVIDIA_RUNTIME, "runsc": {"path": "/usr/local/bin/runsc"}},
    }


def test_docker_was_restarted_by_the_handler_and_runs(docker_host):
    record = "/var/lib/gpuserve-tests/docker-invocation-before"
    before = docker_host.file(record).content_string.strip()
    now = docker_host.run("systemctl show --property=InvocationID --value docker.service")
    assert before
    assert now.stdout.strip() != before
    assert docker_host.service("docker.service").is_running


def test_the_host_without_docker_gets_no_daemon_json():
    plain = scenario_host(PLAIN_HOST)
    assert not plain.file("/etc/systemd/system/docker.service").exists
    assert not plain.exists("dockerd")
    assert not plain.file("/etc/docker").exists  # nothing written for a Docker that is not there


# --- CDI -------------------------------------------------------------------------------------
def test_no_cdi_spec_on_a_host_without_a_gpu(host):
    # The precondition, read as the role reads it: no PCI device of NVIDIA's vendor ID.
    vendors = host.run("cat /sys/bus/pci/devices/*/vendor").stdout.split()
    assert "0x10de" not in vendors
    assert not host.file("/etc/cdi/nvidia.yaml").exists
    assert not host.file("/etc/cdi").exists


# --- check mode ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def check_run_without_the_runtime():
    """gpu_stack.yml --check on the converged hosts, with the nvidia runtime taken out of
    daemon.json on the Docker host (restored afterwards): check mode must report it and change
    nothing. The whole stage, not --tags: a role's argument-spec check is tagged always and
    needs the facts that --tags would skip. This file sorts first, so it meets the converged
    state before test_local_reboot and test_rollout change the hosts."""
    docker_host = scenario_host(DOCKER_HOST)
    original = docker_host.file(DAEMON_JSON).content_string
    stripped = json.loads(original)
    del stripped["runtimes"]["nvidia"]
    docker_host.run(f"cp {DAEMON_JSON} /var/lib/gpuserve-tests/daemon.json.orig")
    docker_host.run(f"printf '%s' '{json.dumps(stripped)}' > {DAEMON_JSON}")
    try:
        recap, out = check_mode.check_mode_changes(
            INVENTORY,
            PROJECT / "playbooks/gpu_stack.yml",
            ["-e", "gpu_stack_serial=100%"],
        )
        after = docker_host.file(DAEMON_JSON).content_string
    finally:
        docker_host.run(f"cp /var/lib/gpuserve-tests/daemon.json.orig {DAEMON_JSON}")
    return recap, out, json.dumps(stripped), after


def test_check_mode_changes_nothing(check_run_without_the_runtime):
    recap, out, _, _ = check_run_without_the_runtime
    assert recap == dict.fromkeys(recap, 0), check_mode.changed_tasks(out)
    assert len(recap) == 2
    assert "Install the pinned NVIDIA Container Toolkit packages" in out  # the role did run


def test_check_mode_reports_the_missing_runtime_and_leaves_daemon_json(
    check_run_without_the_runtime,
):
    _, out, before, after = check_run_without_the_runtime
    out = " ".join(out.split())  # the yaml result format may wrap a long message
    assert f"Check mode: {DAEMON_JSON} lacks the nvidia runtime" in out
    assert after == before
    assert f"Docker runtime skipped on {PLAIN_HOST}: Docker is not installed" in out
    for name in (PLAIN_HOST, DOCKER_HOST):
        assert f"CDI spec skipped on {name}: no NVIDIA GPU on the PCI bus" in out
