"""site.yml and the preflight role on this machine (no NVIDIA GPU): what an operator sees."""

from __future__ import annotations

from pathlib import Path

from playbook_run import PlaybookRun


def test_site_on_a_host_without_gpu_stops_at_preflight_with_one_sentence(run_playbook) -> None:
    run: PlaybookRun = run_playbook("site.yml")
    assert run.status == "failed"
    messages = run.failure_messages()
    assert len(messages) == 1
    msg = messages[0]
    assert msg.startswith("No NVIDIA GPU found on localhost")
    assert "-i inventories/<yours>" in msg
    assert "preflight_require_gpu=false" in msg
    assert msg.count(". ") == 0, "one sentence, not a list of unrelated failures"
    assert "Traceback" not in run.stdout
    # Nothing after preflight ran: the only failed task is the preflight assertion.
    failed = [e for e in run.events if e.get("event") == "runner_on_failed"]
    assert failed[0]["event_data"]["task"] == "Fail on every unmet requirement"


def test_each_unmet_requirement_names_its_switch(run_playbook, gpu_sysfs: Path, tmp_path) -> None:
    run = run_playbook(
        "playbooks/preflight.yml",
        {
            "preflight_pci_devices_path": str(gpu_sysfs / "bus/pci/devices"),
            "preflight_efi_path": str(gpu_sysfs / "firmware/efi"),
            "preflight_fail_on_secure_boot": True,
            "preflight_min_memory_gb": 100000,
            "preflight_min_gpus": 4,
            "preflight_supported_os": {"Ubuntu": ["24.04"]},
            "preflight_report_path": str(tmp_path / "report.json"),
        },
    )
    assert run.status == "failed"
    (msg,) = run.failure_messages()
    for switch in (
        "preflight_check_os=false",
        "preflight_min_gpus=4",
        "preflight_fail_on_secure_boot=true",
        "preflight_min_memory_gb=100000",
    ):
        assert switch in msg
    assert "supported: Ubuntu 24.04" in msg
    assert not (tmp_path / "report.json").exists(), "no report for a failing host"


def test_relaxed_checks_pass_and_write_the_report(run_playbook, gpu_sysfs: Path, tmp_path) -> None:
    report = tmp_path / "report.json"
    run = run_playbook(
        "playbooks/preflight.yml",
        {
            "preflight_pci_devices_path": str(gpu_sysfs / "bus/pci/devices"),
            "preflight_efi_path": str(gpu_sysfs / "firmware/efi"),
            "preflight_require_kernel_headers": False,
            "preflight_min_disk_gb": 0,
            "preflight_min_memory_gb": 0,
            "preflight_report_path": str(report),
        },
    )
    assert run.status == "successful", run.stdout[-2000:]
    assert '"name": "NVIDIA GeForce RTX 5090"' in report.read_text()
    assert '"secure_boot": "enabled"' in report.read_text()


def test_bad_variable_type_is_refused_by_the_argument_spec(run_playbook) -> None:
    run = run_playbook("playbooks/preflight.yml", {"preflight_min_gpus": "two"})
    assert run.status == "failed"
    (msg,) = run.failure_messages()
    assert "preflight_min_gpus" in msg
