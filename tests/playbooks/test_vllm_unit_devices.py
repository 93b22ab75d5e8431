"""The real engine's vllm@ unit allows the NVIDIA device classes by name, whatever /proc/devices
says at deploy time, and starts only after the unit that loads the modules and makes the nodes.

Rendered through Ansible with the role's own defaults and vars on this machine, whose
/proc/devices has no NVIDIA driver at all (the deploy-time state of a host where nvidia-uvm
is not loaded yet), then parsed by systemd's own unit loader (systemd-analyze verify).

The expected names are the ones the NVIDIA open kernel modules register (read 2026-12-01 from
github.com/NVIDIA/open-gpu-kernel-modules at tag 580.95.05: kernel-open/nvidia/nv.c registers
"nvidia" (/dev/nvidia0..N) and "nvidiactl" on major 195; nvidia-modeset-linux.c
"nvidia-modeset" (195:254); nvidia-uvm/uvm.c NVIDIA_UVM_DEVICE_NAME "nvidia-uvm"; nv-caps.c
"nvidia-caps"), and that /proc/devices lists on an H200 host with driver 580
(/work/shared/gpu/README.md: nvidia, nvidiactl, nvidia-uvm, nvidia-nvswitch, nvidia-nvlink,
nvidia-caps, nvidia-caps-imex-channels). "nvidia-frontend" is the pre-open-module name of
major 195; R570+ does not register it, so char-nvidia-frontend would match nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REAL_DRIVER_GROUPS = ["nvidia", "nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-caps"]
H200_PROC_DEVICES = {
    "nvidia",
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-nvswitch",
    "nvidia-nvlink",
    "nvidia-caps",
    "nvidia-caps-imex-channels",
}
DEVICES_UNIT = "gpuserve-nvidia-devices.service"


def render(run_playbook, tmp_path: Path, engine: str) -> dict[str, str]:
    out = tmp_path / engine
    out.mkdir()
    run = run_playbook(
        "tests/playbooks/files/render_vllm_units.yml",
        {"vllm_service_engine": engine, "render_dir": str(out)},
    )
    assert run.status == "successful", run.stdout[-3000:]
    return {p.name: p.read_text() for p in out.iterdir()}


def values(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def test_this_host_lacks_nvidia_uvm_in_proc_devices() -> None:
    # The precondition of the next test: the deploy-time state that used to drop the uvm line.
    assert "nvidia-uvm" not in Path("/proc/devices").read_text()


def test_real_engine_unit_allows_uvm_without_it_in_proc_devices(run_playbook, tmp_path) -> None:
    units = render(run_playbook, tmp_path, "vllm")
    unit = units["vllm@.service"]
    allow = values(unit, "DeviceAllow")
    assert allow == [f"char-{name} rw" for name in REAL_DRIVER_GROUPS]
    assert "char-nvidia-uvm rw" in allow
    # Every name is one a real 580 host lists (nvidia-modeset: headless H200 had it unloaded).
    assert {a.split()[0].removeprefix("char-") for a in allow} <= H200_PROC_DEVICES | {
        "nvidia-modeset"
    }
    assert values(unit, "DevicePolicy") == ["closed"]
    assert values(unit, "Requires") == [DEVICES_UNIT]
    assert DEVICES_UNIT in values(unit, "After")
    devices = units[DEVICES_UNIT]
    assert values(devices, "Type") == ["oneshot"]
    assert values(devices, "RemainAfterExit") == ["yes"]
    assert values(devices, "ExecStart") == [
        "/usr/bin/python3 /usr/local/libexec/gpuserve/nvidia-devices"
    ]


def test_simulator_unit_has_no_devices_and_no_device_unit(run_playbook, tmp_path) -> None:
    unit = render(run_playbook, tmp_path, "simulator")["vllm@.service"]
    assert values(unit, "DeviceAllow") == []
    assert values(unit, "PrivateDevices") == ["yes"]
    assert values(unit, "Requires") == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_parses_every_line_of_the_real_engine_units(run_playbook, tmp_path) -> None:
    units = render(run_playbook, tmp_path, "vllm")
    instance = tmp_path / "vllm@check.service"
    instance.write_text(units["vllm@.service"])
    devices = tmp_path / DEVICES_UNIT
    devices.write_text(units[DEVICES_UNIT])
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance), str(devices)],
        capture_output=True,
        text=True,
    )
    complaints = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if "vllm@check.service:" in line or f"{DEVICES_UNIT}:" in line
    ]
    assert complaints == [], out.stderr
