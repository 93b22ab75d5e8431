"""The host_gpu_facts module's sysfs/efivars parsing, on trees built per test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "host_gpu_facts.py"
spec = importlib.util.spec_from_file_location("host_gpu_facts", MODULE)
assert spec is not None
assert spec.loader is not None
gpu_facts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_facts)


def add_device(root: Path, address: str, vendor: str, device: str, pci_class: str) -> None:
    d = root / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    (d / "class").write_text(pci_class + "\n")


def test_only_nvidia_display_controllers_count(tmp_path: Path) -> None:
    add_device(tmp_path, "0000:01:00.0", "0x10de", "0x2b85", "0x030000")
    add_device(tmp_path, "0000:01:00.1", "0x10de", "0x22e8", "0x040300")  # HDMI audio
    add_device(tmp_path, "0000:00:02.0", "0x8086", "0x46a6", "0x030000")  # Intel iGPU
    gpus = gpu_facts.find_gpus(tmp_path, tmp_path / "no-proc")
    assert [g["pci_address"] for g in gpus] == ["0000:01:00.0"]
    assert gpus[0]["name"] == "NVIDIA GeForce RTX 5090"
    assert gpus[0]["compute_capability"] == "12.0"


def test_driver_name_wins_over_the_id_table(tmp_path: Path) -> None:
    add_device(tmp_path / "pci", "0000:18:00.0", "0x10de", "0x2335", "0x030200")
    info = tmp_path / "proc" / "0000:18:00.0"
    info.mkdir(parents=True)
    (info / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   42\n")
    gpus = gpu_facts.find_gpus(tmp_path / "pci", tmp_path / "proc")
    assert gpus[0]["name"] == "NVIDIA H200"
    assert gpus[0]["name_source"] == "driver"
    assert gpus[0]["compute_capability"] == "9.0"


def test_unknown_device_is_reported_not_guessed(tmp_path: Path) -> None:
    add_device(tmp_path, "0000:03:00.0", "0x10de", "0x9999", "0x030000")
    gpu = gpu_facts.find_gpus(tmp_path, tmp_path / "no-proc")[0]
    assert gpu["name"] == "unknown NVIDIA GPU (device 0x9999)"
    assert gpu["compute_capability"] is None
    assert gpu["name_source"] == "unknown"


def test_missing_pci_tree_means_no_gpus(tmp_path: Path) -> None:
    assert gpu_facts.find_gpus(tmp_path / "absent", tmp_path) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"\x06\x00\x00\x00\x01", "enabled"), (b"\x06\x00\x00\x00\x00", "disabled"), (b"", "unknown")],
)
def test_secure_boot_from_efivar(tmp_path: Path, value: bytes, expected: str) -> None:
    # The name real firmware gives the variable (tests/unit/test_secure_boot.py cites the source).
    var = tmp_path / "efivars" / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    var.parent.mkdir(parents=True)
    var.write_bytes(value)
    assert gpu_facts.secure_boot_state(tmp_path) == expected


def test_secure_boot_on_bios_host(tmp_path: Path) -> None:
    assert gpu_facts.secure_boot_state(tmp_path / "no-efi") == "not-uefi"


def test_uefi_without_the_variable_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "efivars").mkdir()
    assert gpu_facts.secure_boot_state(tmp_path) == "unknown"
