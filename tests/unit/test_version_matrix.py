"""The version matrix against what PyPI publishes, recorded in tests/version-lock.json.

The lock is generated from the real wheels' metadata by `make version-lock` (tests/version_lock.py);
these tests never compare the matrix with itself. A failure here means the matrix pairs versions
pip would refuse (vLLM pins an exact torch), a torch built for another CUDA than the profile's
toolkit, or a venv NCCL below the minimum the profile promises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.compat.version import LooseVersion

PROJECT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((PROJECT / "roles/gpuserve/defaults/main.yml").read_text())
MATRIX = DEFAULTS["gpuserve_version_matrix"]
LOCK = json.loads((PROJECT / "tests/version-lock.json").read_text())
PINNED = sorted(name for name, profile in MATRIX.items() if profile["pinned"])
REGEN = "run `make version-lock` after changing a pin"


def locked(package: str, version: str, profile: str) -> dict:
    """The lock's record of package==version, which profile needs."""
    entry = LOCK[package].get(version)
    assert entry, f"{profile}: {package} {version} is not in tests/version-lock.json; {REGEN}"
    return entry


def test_profiles_are_the_ones_the_argument_spec_allows():
    spec = yaml.safe_load((PROJECT / "roles/gpuserve/meta/argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]["options"]["gpuserve_profile"]
    assert sorted(option["choices"]) == sorted(MATRIX)
    assert option["default"] == DEFAULTS["gpuserve_profile"] == "blackwell-cuda12.8"


@pytest.mark.parametrize("name", PINNED)
def test_torch_pin_is_the_one_the_vllm_release_requires(name):
    profile = MATRIX[name]
    vllm = locked("vllm", profile["vllm_version"], name)
    assert vllm["torch"] == "==" + profile["torch_version"], (
        f"{name}: vLLM {profile['vllm_version']}'s wheel ({vllm['wheel']}) requires "
        f"torch{vllm['torch']}, the matrix pins torch {profile['torch_version']}"
    )


@pytest.mark.parametrize("name", PINNED)
def test_torch_is_built_for_the_profiles_cuda(name):
    profile = MATRIX[name]
    torch = locked("torch", profile["torch_version"], name)
    assert torch["cuda"] == profile["cuda_version"], (
        f"{name}: torch {profile['torch_version']} ({torch['wheel']}) is a CUDA {torch['cuda']} "
        f"build, the profile installs CUDA {profile['cuda_version']}"
    )
    assert profile["torch_index_url"].endswith("/cu" + profile["cuda_version"].replace(".", ""))


@pytest.mark.parametrize("name", PINNED)
def test_venv_nccl_from_the_torch_wheel_meets_the_minimum(name):
    # torch and vLLM load NCCL from the nvidia-nccl-cuXX wheel, not from the apt libnccl2.
    profile = MATRIX[name]
    nccl = LOCK["torch"][profile["torch_version"]]["nccl"]
    assert LooseVersion(nccl) >= LooseVersion(profile["nccl_min_version"]), (
        f"{name}: torch {profile['torch_version']} loads NCCL {nccl}, "
        f"below {profile['nccl_min_version']}"
    )
    assert LooseVersion(profile["nccl_package_version"].split("-")[0]) >= LooseVersion(
        profile["nccl_min_version"]
    )


def test_default_profile_is_cuda_12_8_on_a_supported_open_branch():
    profile = MATRIX[DEFAULTS["gpuserve_profile"]]
    assert profile["cuda_version"] == "12.8"
    # R570 reached end of life in Feb 2026; R580 is NVIDIA's long-term support branch.
    assert profile["driver_branch"] >= 580
    assert profile["nccl_min_version"] == "2.26.5"
    assert profile["cuda_arch_list"] == "12.0"


def test_current_profile_is_the_newest_vllm_release_when_locked():
    # `newest_release` is what the index listed when the lock was generated.
    assert MATRIX["current"]["vllm_version"] == LOCK["newest_release"]["vllm"]


def test_nightly_profile_is_unpinned_pre_release_from_the_nightly_index():
    nightly = MATRIX["pytorch-nightly"]
    assert nightly["pinned"] is False
    assert nightly["torch_version"] == ""
    assert nightly["torch_pre"] is True
    assert "/whl/nightly/" in nightly["torch_index_url"]
    assert all(MATRIX[name]["torch_pre"] is False for name in PINNED)


def test_driver_minimum_belongs_to_the_branch():
    for name, profile in MATRIX.items():
        assert profile["driver_min_version"].split(".")[0] == str(profile["driver_branch"]), name
