"""The nvidia_container_toolkit role's CDI decision on this machine, with fixture GPU state.

tests/playbooks/files/nvidia_container_toolkit_cdi.yml runs only the role's preflight and
configure phases. The GPU comes from the fixture sysfs tree (two RTX 5090s), the loaded driver
from a procfs tree written here, and `nvidia-ctk` is a TEST DOUBLE first on PATH that records
its arguments and writes a spec naming the driver version: the real tool needs a GPU and NVML,
so what is tested is when the role calls it, not what it writes. Docker is switched off
(nvidia_container_toolkit_docker=false) and the spec path points into tmp_path: this machine's
/etc is never touched.
"""

from __future__ import annotations

from pathlib import Path

from playbook_run import PlaybookRun

PLAYBOOK = "tests/playbooks/files/nvidia_container_toolkit_cdi.yml"
CHECK = "Check whether the CDI spec is from the loaded driver"
GENERATE = "Write the CDI spec for the loaded driver"
SKIPPED = "Report why the CDI spec is not generated"
CHECK_MODE = "Report that check mode does not generate the CDI spec"
LOADED = "580.95.05"


def fake_ctk(tmp_path: Path) -> Path:
    """A nvidia-ctk test double in tmp_path/bin; returns its call log."""
    bindir, log = tmp_path / "bin", tmp_path / "ctk-calls.log"
    bindir.mkdir()
    script = bindir / "nvidia-ctk"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'out="${3#--output=}"\n'
        f"printf 'cdiVersion: 0.5.0\\nkind: nvidia.com/gpu\\n# libcuda.so.{LOADED}\\n' > \"$out\"\n"
    )
    script.chmod(0o755)
    return log


def procfs(tmp_path: Path, loaded: bool) -> Path:
    root = tmp_path / "proc"
    (root / "driver/nvidia").mkdir(parents=True)
    if loaded:
        (root / "driver/nvidia/version").write_text(
            f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {LOADED}  Release Build\n"
        )
    return root


def run_cdi(run_playbook, tmp_path, sysfs: Path, loaded: bool = True, check: bool = False):
    bindir = tmp_path / "bin"
    proc = tmp_path / "proc"
    return run_playbook(
        PLAYBOOK,
        {
            "nvidia_container_toolkit_docker": False,
            "nvidia_container_toolkit_sysfs_path": str(sysfs),
            "nvidia_container_toolkit_procfs_path": str(
                proc if proc.exists() else procfs(tmp_path, loaded)
            ),
            "_nvidia_container_toolkit_cdi_spec": str(tmp_path / "cdi" / "nvidia.yaml"),
        },
        path_first=str(bindir),
        check=check,
    )


def ran(run: PlaybookRun, task: str) -> bool:
    return bool(run.task_results(task))


def test_gpu_and_loaded_driver_generate_the_spec_once(run_playbook, gpu_sysfs, tmp_path):
    log = fake_ctk(tmp_path)
    (tmp_path / "cdi").mkdir()
    spec = tmp_path / "cdi" / "nvidia.yaml"
    first = run_cdi(run_playbook, tmp_path, gpu_sysfs)
    assert first.status == "successful", first.stdout[-3000:]
    (generated,) = first.task_results(GENERATE)
    assert generated["changed"]
    assert log.read_text() == f"cdi generate --output={spec}\n"
    assert f"libcuda.so.{LOADED}" in spec.read_text()

    second = run_cdi(run_playbook, tmp_path, gpu_sysfs)
    assert second.status == "successful", second.stdout[-3000:]
    (current,) = second.task_results(CHECK)
    assert current["rc"] == 0
    assert not ran(second, GENERATE)
    assert log.read_text().count("cdi generate") == 1  # not called again


def test_spec_of_another_driver_is_regenerated(run_playbook, gpu_sysfs, tmp_path):
    log = fake_ctk(tmp_path)
    (tmp_path / "cdi").mkdir()
    spec = tmp_path / "cdi" / "nvidia.yaml"
    spec.write_text("cdiVersion: 0.5.0\n# libcuda.so.580.65.06\n")
    run = run_cdi(run_playbook, tmp_path, gpu_sysfs)
    assert run.status == "successful", run.stdout[-3000:]
    assert run.task_results(CHECK)[0]["rc"] == 1
    assert run.task_results(GENERATE)[0]["changed"]
    assert f"libcuda.so.{LOADED}" in spec.read_text()
    assert log.read_text() == f"cdi generate --output={spec}\n"


def test_check_mode_reports_and_writes_no_spec(run_playbook, gpu_sysfs, tmp_path):
    log = fake_ctk(tmp_path)
    run = run_cdi(run_playbook, tmp_path, gpu_sysfs, check=True)
    assert run.status == "successful", run.stdout[-3000:]
    (report,) = run.task_results(CHECK_MODE)
    assert "a real run executes `nvidia-ctk cdi generate`" in report["msg"]
    assert not ran(run, GENERATE)
    assert not log.exists()
    assert not (tmp_path / "cdi" / "nvidia.yaml").exists()


def test_gpu_without_a_loaded_driver_is_skipped_with_the_reason(run_playbook, gpu_sysfs, tmp_path):
    log = fake_ctk(tmp_path)
    procfs(tmp_path, loaded=False)
    run = run_cdi(run_playbook, tmp_path, gpu_sysfs)
    assert run.status == "successful", run.stdout[-3000:]
    (report,) = run.task_results(SKIPPED)
    assert "the NVIDIA kernel module is not loaded" in report["msg"]
    assert not log.exists()


def test_no_gpu_is_skipped_with_the_reason(run_playbook, tmp_path):
    log = fake_ctk(tmp_path)
    sysfs = tmp_path / "sys"
    (sysfs / "bus/pci/devices").mkdir(parents=True)
    run = run_cdi(run_playbook, tmp_path, sysfs)
    assert run.status == "successful", run.stdout[-3000:]
    (report,) = run.task_results(SKIPPED)
    assert "no NVIDIA GPU on the PCI bus" in report["msg"]
    assert not log.exists()
