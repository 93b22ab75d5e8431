"""gpu_stack scenario: nvidia_driver, cuda_toolkit and nccl against the nvidia_repo test fixture.

What these containers can and cannot prove:
- The fixture's DRIVER packages carry metadata and configuration only (no kernel module, no
  nvidia-smi), and a container has no kernel of its own. So the driver tests check packages,
  pins, the upgrade from the proprietary 550 driver, nouveau, nvidia-persistenced and the
  logged reboot skip; whether nvidia-smi sees the GPUs is NOT tested here (see the test
  named for it, which checks that the role reported the skip instead of passing silently).
- The toolkit and NCCL packages carry REAL NVIDIA binaries repackaged from PyPI wheels:
  ptxas 12.8.93 and libcudart 12.8.90 (the 12.8.93 nvcc wheel ships no nvcc binary, so
  nvcc itself is not tested) and libnccl.so.2 2.26.5, read through ncclGetVersion().
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[3]
MATRIX = yaml.safe_load((PROJECT / "roles/gpuserve/defaults/main.yml").read_text())
PROFILE = MATRIX["gpuserve_version_matrix"][MATRIX["gpuserve_profile"]]
CUDA = PROFILE["cuda_version"]
CUDA_PKG = PROFILE["cuda_package_version"]
NCCL_PKG = PROFILE["nccl_package_version"]
NCCL = NCCL_PKG.split("-")[0]
FIXTURE = json.loads((PROJECT / ".cache/nvidia_repo/repo/fixture.json").read_text())
BRANCH = PROFILE["driver_branch"]
# The newest build of the profile's branch in the fixture: what the role must pick.
DRIVER = FIXTURE["driver_open_versions"][-1]


def distro(host) -> str:
    return "debian" + host.system_info.release.split(".")[0]


# --- repository trust --------------------------------------------------------------------------
def test_cuda_repo_is_configured_once_by_the_keyring_list(host):
    lists = host.run("grep -l 'nvidia_repo/cuda/' /etc/apt/sources.list.d/*").stdout.split()
    assert lists == [f"/etc/apt/sources.list.d/cuda-{distro(host)}-x86_64.list"]
    line = host.file(lists[0]).content_string.strip()
    assert line.startswith("deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] file://")


def test_duplicate_cuda_source_was_backed_up_and_removed(host):
    assert not host.file("/etc/apt/sources.list.d/cuda.list").exists
    assert host.file("/var/backups/gpuserve/cuda.list.removed").contains("nvidia_repo/cuda/")


def test_cuda_keyring_1_1_1_is_installed(host):
    assert host.package("cuda-keyring").version == "1.1-1"


def test_apt_update_has_no_duplicate_source_warning(host):
    out = host.run("apt-get update 2>&1")
    assert out.rc == 0, out.stdout
    assert "configured multiple times" not in out.stdout


# --- driver --------------------------------------------------------------------------------------
def test_proprietary_550_driver_was_replaced_by_the_open_branch_of_the_profile(host):
    assert FIXTURE["driver_branch"] == BRANCH
    assert not host.package("nvidia-kernel-dkms").is_installed
    assert not host.package("cuda-drivers-550").is_installed
    assert host.package("nvidia-kernel-open-dkms").version == DRIVER
    assert host.package(f"cuda-drivers-{BRANCH}").version == DRIVER
    assert host.package("nvidia-persistenced").version == DRIVER


def test_driver_packages_are_no_longer_held(host):
    held = host.run("apt-mark showhold").stdout.split()
    assert not [p for p in held if p.startswith(("nvidia", "cuda-drivers"))]


def test_driver_version_pin_wins_over_newer_and_older_builds(host):
    pin = host.file("/etc/apt/preferences.d/gpuserve-nvidia-driver").content_string
    assert f"Pin: version {DRIVER.split('-')[0]}-*" in pin
    assert "Pin-Priority: 1001" in pin
    policy = host.run("apt-cache policy nvidia-kernel-open-dkms").stdout
    assert f"Candidate: {DRIVER}" in policy
    assert f"*** {DRIVER} 1001" in policy


def test_nouveau_is_blacklisted(host):
    conf = host.file("/etc/modprobe.d/gpuserve-blacklist-nouveau.conf")
    assert conf.contains("^blacklist nouveau$")
    assert conf.contains("^options nouveau modeset=0$")


def test_nvidia_persistenced_is_enabled_in_persistence_mode(host):
    assert host.service("nvidia-persistenced").is_enabled
    exec_start = host.run("systemctl show -p ExecStart nvidia-persistenced").stdout
    assert "--persistence-mode" in exec_start
    assert "--no-persistence-mode" not in exec_start


def test_reboot_was_skipped_in_the_container_with_the_reason_recorded(host):
    marker = host.file("/run/reboot-required")
    assert marker.contains("System restart required")
    assert marker.contains("reboot skipped: running in a container")


def test_no_nvidia_module_in_the_container_so_nvidia_smi_is_not_verified_here(host):
    # Honest limit of CI: the fixture driver has no kernel module and no nvidia-smi, and a
    # container cannot load one. The role must skip the nvidia-smi check (it logs why).
    assert not host.file("/proc/driver/nvidia/version").exists
    assert not host.exists("nvidia-smi")
    assert host.file("/usr/share/doc/nvidia-kernel-open-dkms/README.fixture").contains(
        "metadata and configuration only"
    )


# --- CUDA toolkit -----------------------------------------------------------------------------
def test_cuda_toolkit_is_installed_at_the_pinned_version(host):
    assert host.package(f"cuda-toolkit-{CUDA.replace('.', '-')}").version == CUDA_PKG
    pin = host.file("/etc/apt/preferences.d/gpuserve-cuda-toolkit").content_string
    assert f"Pin: version {CUDA_PKG}" in pin


def test_cuda_toolkit_pulled_no_driver(host):
    # The fixture's cuda-12-8 depends on cuda-drivers (like NVIDIA's); the role must not use it.
    assert not host.package(f"cuda-{CUDA.replace('.', '-')}").is_installed
    assert not host.package("cuda-drivers").is_installed
    deps = host.run(
        f"apt-cache depends --recurse --installed cuda-toolkit-{CUDA.replace('.', '-')}"
    ).stdout
    assert "cuda-drivers" not in deps
    assert "nvidia-kernel" not in deps


def test_usr_local_cuda_points_at_the_toolkit(host):
    link = host.file("/usr/local/cuda")
    assert link.is_symlink
    assert link.linked_to == f"/usr/local/cuda-{CUDA}"


def test_profile_d_exports_bin_and_lib64(host):
    env = host.run("bash -lc 'echo $CUDA_HOME; echo $PATH; echo $LD_LIBRARY_PATH'").stdout.split()
    assert env[0] == "/usr/local/cuda"
    assert env[1].startswith("/usr/local/cuda/bin:")
    assert env[2].split(":")[0] == "/usr/local/cuda/lib64"
    # Sourcing twice must not duplicate the entries.
    twice = host.run("bash -lc '. /etc/profile.d/gpuserve-cuda.sh; echo $PATH'").stdout
    assert twice.count("/usr/local/cuda/bin") == 1


def test_ldconfig_resolves_libcudart_from_the_toolkit_lib64(host):
    assert host.file("/etc/ld.so.conf.d/gpuserve-cuda.conf").contains(
        f"^/usr/local/cuda-{CUDA}/lib64$"
    )
    cache = host.run("ldconfig -p").stdout
    assert f"/usr/local/cuda-{CUDA}/lib64/libcudart.so.12" in cache


def test_real_ptxas_from_the_toolkit_reports_release_12_8(host):
    # ptxas stands in for nvcc: NVIDIA's nvidia-cuda-nvcc-cu12==12.8.93 wheel has no nvcc.
    out = host.run("bash -lc 'ptxas --version'")
    assert out.rc == 0, out.stderr
    assert f"release {CUDA}, V12.8.93" in out.stdout


# --- NCCL --------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["libnccl2", "libnccl-dev"])
def test_nccl_package_is_installed_at_the_pinned_version(host, package):
    assert host.package(package).version == NCCL_PKG


def test_nccl_pin_blocks_archive_origins_and_pins_the_version(host):
    pin = host.file("/etc/apt/preferences.d/gpuserve-nccl").content_string
    assert "Pin: release o=Ubuntu\nPin-Priority: -1" in pin
    assert f"Pin: version {NCCL_PKG}\nPin-Priority: 1001" in pin


def test_nccl_pin_beats_the_older_decoy_and_the_newer_build(host):
    policy = host.run("apt-cache policy libnccl2").stdout
    assert f"Candidate: {NCCL_PKG}" in policy
    assert "2.18.5-1 -1" in policy  # decoy repo (origin Ubuntu, default priority 990) blocked
    assert "2.27.3-1+cuda12.9 600" in policy  # newer NVIDIA build is not taken


def test_without_the_gpuserve_pin_apt_would_take_a_decoy(host):
    # Proves both decoys are real threats: with only the keyring's and the decoy's preferences,
    # a fresh host would install the old 2.18 (decoy repo, priority 990) and this host would
    # upgrade to the newer, untested 2.27.3.
    only_other_prefs = (
        "d=$(mktemp -d) && cp /etc/apt/preferences.d/cuda-repository-pin-600 "
        "/etc/apt/preferences.d/decoy-ubuntu-multiverse $d/ && "
        "apt-cache -o Dir::Etc::PreferencesParts=$d {} policy libnccl2; rm -rf $d"
    )
    fresh = host.run(only_other_prefs.format("-o Dir::State::status=/dev/null"))
    assert "Candidate: 2.18.5-1" in fresh.stdout
    installed = host.run(only_other_prefs.format(""))
    assert "Candidate: 2.27.3-1+cuda12.9" in installed.stdout


def test_ncclgetversion_of_the_real_library_reports_2_26_5(host):
    code = (
        "import ctypes; lib = ctypes.CDLL('libnccl.so.2'); v = ctypes.c_int(); "
        "assert lib.ncclGetVersion(ctypes.byref(v)) == 0; print(v.value)"
    )
    out = host.run(f'python3 -c "{code}"')
    assert out.rc == 0, out.stderr
    major, minor, patch = (int(p) for p in NCCL.split("."))
    assert int(out.stdout) == major * 10000 + minor * 100 + patch


# --- playbooks/verify.yml ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def verify_reports():
    """Run playbooks/verify.yml once against the scenario's hosts; return the JSON reports."""
    report_dir = tempfile.mkdtemp(prefix="gpu_stack-verify-")
    cmd = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(PROJECT / "playbooks/verify.yml"),
        "-e",
        f"verify_report_dir={report_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=PROJECT)
    reports = {
        p.stem.removeprefix("verify-"): json.loads(p.read_text())
        for p in Path(report_dir).glob("verify-*.json")
    }
    return proc, reports


def checks_of(reports, host) -> dict[str, dict]:
    name = host.backend.get_hostname()
    return {c["name"]: c for c in reports[name]["checks"]}


def test_verify_playbook_passes_and_writes_a_report_per_host(verify_reports, host):
    proc, reports = verify_reports
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert reports[host.backend.get_hostname()]["result"] == "pass"


def test_each_host_keeps_its_own_report_equal_to_the_controller_copy(verify_reports, host):
    on_host = host.file("/var/lib/gpuserve/verify.json")  # verify_report_path's default
    assert on_host.mode == 0o644
    assert json.loads(on_host.content_string) == verify_reports[1][host.backend.get_hostname()]


def test_verify_reports_gpu_checks_as_no_gpu_not_as_passes(verify_reports, host):
    checks = checks_of(verify_reports[1], host)
    assert checks["driver"]["status"] == "no_gpu"
    assert "gpus" not in checks  # nothing claims GPUs were seen


def test_verify_reports_toolkit_release_and_system_nccl(verify_reports, host):
    checks = checks_of(verify_reports[1], host)
    assert checks["cuda toolkit"]["status"] == "pass"
    assert checks["cuda toolkit"]["release"] == CUDA
    assert "no nvcc" in checks["cuda toolkit"]["detail"]  # fixture limit, reported honestly
    assert checks["system nccl"] == {
        "name": "system nccl",
        "status": "pass",
        "detail": f"{NCCL} (need >= {PROFILE['nccl_min_version']})",
        "version": NCCL,
    }


def test_verify_skips_torch_when_no_venv_exists(verify_reports, host):
    checks = checks_of(verify_reports[1], host)
    assert checks["torch venv"]["status"] == "skipped"
    assert "/opt/vllm/venv" in checks["torch venv"]["detail"]  # vllm_build_venv
