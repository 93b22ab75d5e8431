"""Unit tests of playbooks/files/gpu_verify.py (the day-2 check) and the nccl role's helper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gv = load("gpu_verify", ROOT / "playbooks/files/gpu_verify.py")
nv = load("nccl_version", ROOT / "roles/nccl/files/nccl_version.py")

OPEN_580 = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n"


def test_driver_version_branch_and_flavour():
    assert gv.parse_driver(OPEN_580) == {
        "version": "580.159.04",
        "branch": "580",
        "flavour": "open",
    }
    assert gv.parse_driver("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.144.03\n")[
        "flavour"
    ] == ("proprietary")


def test_nvidia_smi_rows():
    csv = "0, NVIDIA H200, 143771 MiB, 9.0, Enabled\n1, NVIDIA H200, 143771 MiB, 9.0, Disabled\n"
    rows = gv.parse_smi(csv)
    assert [r["name"] for r in rows] == ["NVIDIA H200", "NVIDIA H200"]
    assert rows[1]["persistence_mode"] == "Disabled"


@pytest.mark.parametrize(("cap", "sm"), [("9.0", "sm_90"), ("12.0", "sm_120"), ("8.6", "sm_86")])
def test_compute_capability_to_sm(cap, sm):
    assert gv.sm_of(cap) == sm


@pytest.mark.parametrize(
    ("code", "version"), [(22605, "2.26.5"), (22803, "2.28.3"), (2804, "2.8.4")]
)
def test_nccl_version_codes(code, version):
    assert gv.decode_nccl(code) == version
    assert nv.decode(code) == version


def test_nccl_check_compares_versions_numerically():
    assert gv.nccl_check("n", "2.100.1", "2.26.5", "")["status"] == "pass"
    assert gv.nccl_check("n", "2.18.5", "2.26.5", "")["status"] == "fail"
    assert gv.nccl_check("n", "", "2.26.5", "missing")["status"] == "fail"
    assert gv.nccl_check("n", "", "", "missing")["status"] == "skipped"


def test_no_driver_and_no_gpu_is_no_gpu_not_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(gv, "pci_gpu_count", lambda: 0)
    checks, gpus = gv.driver_checks("580", tmp_path / "absent")
    assert [c["status"] for c in checks] == ["no_gpu"]
    assert gpus == []


def test_gpu_on_the_bus_without_driver_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(gv, "pci_gpu_count", lambda: 2)
    checks, _ = gv.driver_checks("580", tmp_path / "absent")
    assert checks[0]["status"] == "fail"


def test_wrong_branch_and_proprietary_module_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(gv, "pci_gpu_count", lambda: 1)
    monkeypatch.setattr(
        gv, "run", lambda *a, **k: (0, "0, NVIDIA RTX 5090, 32607 MiB, 12.0, Enabled")
    )
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.20\n")
    checks, gpus = gv.driver_checks("580", version)
    status = {c["name"]: c["status"] for c in checks}
    assert status["driver"] == "fail"
    assert status["kernel module"] == "fail"
    assert status["gpus"] == "pass"
    assert gpus[0]["compute_cap"] == "12.0"


def test_toolkit_release_from_version_json_when_nvcc_is_absent(tmp_path):
    (tmp_path / "version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "12.8.1"}}')
    assert gv.cuda_check("12.8", tmp_path)["status"] == "pass"
    assert gv.cuda_check("13.0", tmp_path)["status"] == "fail"
    assert gv.cuda_check("", tmp_path / "none")["status"] == "skipped"


def test_torch_checks_skip_without_a_venv(tmp_path):
    checks = gv.torch_checks(tmp_path / "venv", "2.26.5", 10)
    assert checks == [
        {"name": "torch venv", "status": "skipped", "detail": f"no venv at {tmp_path / 'venv'}"}
    ]


def test_report_fails_only_on_failed_checks():
    report = {
        "host": "h",
        "time": "t",
        "result": "pass",
        "checks": [{"name": "driver", "status": "no_gpu", "detail": "none"}],
    }
    assert "driver  NO_GPU  none" in gv.table(report)
