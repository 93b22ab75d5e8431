"""playbooks/verify.yml on this machine: where its reports land, and that its expectations come
from the version matrix through the gpuserve role (per host profile). The CUDA toolkit it reads
is a FIXTURE folder holding only version.json (the file the CUDA toolkit installs), so the
toolkit check's answer depends on the profile alone, not on this machine's CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MATRIX = yaml.safe_load((ROOT / "roles/gpuserve/defaults/main.yml").read_text())
PROFILES = MATRIX["gpuserve_version_matrix"]
VERIFY_VARS = yaml.safe_load((ROOT / "playbooks/verify.yml").read_text())[0]["vars"]


@pytest.fixture
def cuda_home(tmp_path: Path) -> Path:
    """A toolkit folder whose version.json says CUDA 13.0.2 (the `current` profile's CUDA)."""
    home = tmp_path / "cuda"
    home.mkdir()
    (home / "version.json").write_text(json.dumps({"cuda": {"version": "13.0.2"}}))
    return home


def verify(run_playbook, tmp_path: Path, cuda_home: Path, **extra):
    return run_playbook(
        "playbooks/verify.yml",
        {
            "verify_cuda_home": str(cuda_home),
            "verify_venv": str(tmp_path / "no-venv"),
            "verify_report_path": str(tmp_path / "host/verify.json"),
            "verify_report_dir": str(tmp_path / "controller"),
            "verify_fail_on_error": False,
            **extra,
        },
    )


def test_defaults_write_on_the_host_under_var_lib_gpuserve_and_nothing_on_the_controller():
    assert VERIFY_VARS["verify_report_path"] == "/var/lib/gpuserve/verify.json"
    assert VERIFY_VARS["verify_report_dir"] == ""
    assert not (ROOT / "docs/reports").exists()  # the old in-tree location is gone


def test_host_report_and_controller_copy_are_the_same_report(run_playbook, tmp_path, cuda_home):
    run = verify(run_playbook, tmp_path, cuda_home)
    assert run.status == "successful", run.stdout[-3000:]
    on_host = json.loads((tmp_path / "host/verify.json").read_text())
    copy = json.loads((tmp_path / "controller/verify-localhost.json").read_text())
    assert on_host == copy
    assert on_host["inventory_hostname"] == "localhost"
    assert {c["name"] for c in on_host["checks"]} >= {"driver", "cuda toolkit", "system nccl"}


@pytest.mark.parametrize("profile", ["blackwell-cuda12.8", "current"])
def test_expectations_follow_the_hosts_profile_of_the_matrix(
    run_playbook, tmp_path, cuda_home, profile
):
    run = verify(run_playbook, tmp_path, cuda_home, gpuserve_profile=profile)
    assert run.status == "successful", run.stdout[-3000:]
    report = json.loads((tmp_path / "host/verify.json").read_text())
    (toolkit,) = [c for c in report["checks"] if c["name"] == "cuda toolkit"]
    expected = PROFILES[profile]["cuda_version"]
    assert toolkit["detail"].endswith(f"expected {expected}")
    assert toolkit["status"] == ("pass" if expected == "13.0" else "fail")


def test_a_controller_folder_inside_the_checkout_is_refused(run_playbook, tmp_path, cuda_home):
    inside = ROOT / "docs" / "reports"
    run = verify(run_playbook, tmp_path, cuda_home, verify_report_dir=str(inside))
    assert run.status == "failed"
    (msg,) = run.failure_messages()
    assert msg.startswith(f"verify_report_dir={inside} is inside the project checkout")
    assert not inside.exists()
    assert not (tmp_path / "host/verify.json").exists()  # refused before anything is written


def test_empty_paths_write_no_report(run_playbook, tmp_path, cuda_home):
    run = verify(run_playbook, tmp_path, cuda_home, verify_report_path="", verify_report_dir="")
    assert run.status == "successful", run.stdout[-3000:]
    assert not (tmp_path / "host").exists()
    assert not (tmp_path / "controller").exists()
