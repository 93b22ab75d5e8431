"""Preflight against the fixture sysfs tree (tests/fixtures/sysfs): what the report holds."""

import json

import pytest

REPORT = "/var/lib/gpuserve/preflight.json"


@pytest.fixture(scope="module")
def report(host):
    f = host.file(REPORT)
    assert f.exists, f"{REPORT} was not written"
    return json.loads(f.content_string)


def test_report_is_root_owned_and_world_readable(host):
    f = host.file(REPORT)
    assert f.user == "root"
    assert f.mode == 0o644


def test_report_names_the_container_os(host, report):
    distro = host.system_info.distribution
    release = host.system_info.release
    assert report["os"].lower().startswith(distro)
    assert release.split(".")[0] in report["os"]


def test_both_fixture_rtx5090s_found_with_capability_12_0(report):
    assert [g["pci_address"] for g in report["gpus"]] == ["0000:01:00.0", "0000:02:00.0"]
    for gpu in report["gpus"]:
        assert gpu["name"] == "NVIDIA GeForce RTX 5090"
        assert gpu["compute_capability"] == "12.0"
        assert gpu["name_source"] == "id table"


def test_audio_function_and_intel_gpu_not_counted(report):
    addresses = {g["pci_address"] for g in report["gpus"]}
    assert "0000:01:00.1" not in addresses
    assert "0000:00:02.0" not in addresses


def test_secure_boot_read_from_efivar(report):
    assert report["secure_boot"] == "enabled"


def test_every_check_passed(report):
    assert report["checks_passed"] == [
        "operating system",
        "NVIDIA GPUs",
        "compute capability",
        "Secure Boot",
        "free disk",
        "memory",
        "kernel headers",
    ]


def test_module_finds_no_gpu_in_the_real_sysfs(host):
    # The container's own /sys has no NVIDIA device: the module must say so, not guess.
    result = host.ansible("gpuserve.vllm.host_gpu_facts", check=False)
    assert result["ansible_facts"]["gpuserve_gpus"] == []
