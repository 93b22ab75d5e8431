"""Secure Boot ON (the fixture sysfs tree's SecureBoot efivar, value 1): the nvidia_driver role
takes the configured path before it changes anything. Runs the role's preflight phase on this
machine (tests/playbooks/files/nvidia_driver_preflight.yml: read-only tasks only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from playbook_run import PlaybookRun

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SB_TASK = "Assert Secure Boot can load the modules this role installs"


def driver_preflight(run_playbook, gpu_sysfs: Path, tmp_path: Path, **extra) -> PlaybookRun:
    (tmp_path / "proc").mkdir()  # no NVIDIA module loaded
    return run_playbook(
        "tests/playbooks/files/nvidia_driver_preflight.yml",
        {
            "nvidia_driver_sysfs_path": str(gpu_sysfs),
            "nvidia_driver_procfs_path": str(tmp_path / "proc"),
            **extra,
        },
    )


def facts_of(run: PlaybookRun) -> dict:
    (res,) = run.task_results(
        "Read the GPU, kernel module and Secure Boot state (read-only, /sys and /proc)"
    )
    return res


def test_dkms_without_a_mok_fails_with_the_instructions(run_playbook, gpu_sysfs, tmp_path) -> None:
    run = driver_preflight(run_playbook, gpu_sysfs, tmp_path)
    assert run.status == "failed"
    assert facts_of(run)["secure_boot"] == "enabled"
    assert [len(facts_of(run)["gpus"])] == [2]
    (msg,) = run.failure_messages()
    assert msg.startswith("Secure Boot is enabled and the NVIDIA modules would be built by DKMS")
    for step in (
        "nvidia_driver_mok_private_key",
        "mokutil --import",
        "nvidia_driver_ubuntu_signed_modules=true",
    ):
        assert step in msg
    failed = [e["event_data"]["task"] for e in run.events if e.get("event") == "runner_on_failed"]
    assert failed == [SB_TASK]


def test_dkms_with_an_enrolled_mok_proceeds(run_playbook, gpu_sysfs, tmp_path) -> None:
    key, cert = tmp_path / "MOK.priv", tmp_path / "MOK.der"
    key.write_text("fixture key\n")
    cert.write_bytes(b"fixture cert")
    run = driver_preflight(
        run_playbook,
        gpu_sysfs,
        tmp_path,
        nvidia_driver_mok_private_key=str(key),
        nvidia_driver_mok_certificate=str(cert),
    )
    assert run.status == "successful", run.stdout[-3000:]
    assert facts_of(run)["secure_boot"] == "enabled"
    assert run.task_results(SB_TASK)


def test_ubuntu_signed_modules_proceed_without_a_mok(run_playbook, gpu_sysfs, tmp_path) -> None:
    # This machine is Debian; the Ubuntu facts are given (extra vars beat gathered facts).
    run = driver_preflight(
        run_playbook,
        gpu_sysfs,
        tmp_path,
        nvidia_driver_source="ubuntu_archive",
        ansible_distribution="Ubuntu",
        ansible_distribution_version="24.04",
    )
    assert run.status == "successful", run.stdout[-3000:]
    assert run.task_results(SB_TASK)
    (plan,) = run.task_results("Derive the install path from the chosen packages")
    assert plan["ansible_facts"]["_nvidia_driver_uses_dkms"] is False


def test_mok_signing_is_configured_before_anything_dkms_builds() -> None:
    # Ansible's own task order for the role: the DKMS signing configuration precedes the kernel
    # headers (their DKMS hook rebuilds installed modules) and the driver packages (whose
    # postinst runs the first DKMS build).
    out = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "--list-tasks",
            "playbooks/gpu_stack.yml",
            "--tags",
            "nvidia_driver",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tasks = [
        line.split(" : ", 1)[1].split("\t")[0]
        for line in out.splitlines()
        if "nvidia_driver : " in line
    ]
    mok = tasks.index("Configure DKMS to sign modules with the Machine Owner Key")
    assert mok < tasks.index("Install kernel headers for DKMS")
    assert mok < tasks.index("Install the driver packages")
