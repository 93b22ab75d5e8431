"""vllm_build's MAX_JOBS / NVCC_THREADS formula (plugins/filter/vllm_build.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FILTER = Path(__file__).resolve().parents[2] / "plugins" / "filter" / "vllm_build.py"
spec = importlib.util.spec_from_file_location("vllm_build_filter", FILTER)
assert spec
assert spec.loader
vb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vb)

GIB = 1024


def test_32gb_16_core_box_runs_five_single_arch_jobs() -> None:
    # A "32 GB" box reports ~31.3 GiB: (31.3 - 2) // 5 = 5 jobs, 25 GiB at the 5 GiB peak.
    jobs = vb.build_jobs(32045, 16, "12.0")
    assert jobs == {"max_jobs": 5, "nvcc_threads": 1, "parallel": 5}
    assert jobs["parallel"] * vb.DEFAULT_GIB_PER_JOB <= 32045 / GIB - vb.DEFAULT_RESERVE_GIB


def test_memory_never_exceeded_across_box_sizes() -> None:
    for mem_gib in (8, 16, 24, 32, 64, 128, 256, 512):
        for cores in (2, 4, 8, 16, 32, 64, 128):
            for archs in ("12.0", "9.0 12.0", "8.0;8.9;9.0;12.0"):
                jobs = vb.build_jobs(mem_gib * GIB, cores, archs)
                peak = jobs["parallel"] * jobs["nvcc_threads"] * vb.DEFAULT_GIB_PER_JOB
                assert jobs["parallel"] >= 1
                assert jobs["parallel"] * jobs["nvcc_threads"] == jobs["max_jobs"]
                assert jobs["parallel"] * jobs["nvcc_threads"] <= max(cores, jobs["nvcc_threads"])
                if jobs["parallel"] > 1:
                    assert peak <= mem_gib - vb.DEFAULT_RESERVE_GIB


def test_cores_bound_a_box_with_plenty_of_ram() -> None:
    assert vb.build_jobs(512 * GIB, 16, "12.0")["max_jobs"] == 16


def test_small_box_still_builds_with_one_job() -> None:
    assert vb.build_jobs(4 * GIB, 2, "12.0") == {"max_jobs": 1, "nvcc_threads": 1, "parallel": 1}


def test_nvcc_threads_follow_arch_count_capped_at_four() -> None:
    assert vb.build_jobs(256 * GIB, 64, "9.0 12.0")["nvcc_threads"] == 2
    assert vb.build_jobs(256 * GIB, 64, "7.5 8.0 8.6 8.9 9.0 12.0")["nvcc_threads"] == 4


def test_two_arches_on_32gb_halve_the_processes() -> None:
    # Each nvcc process compiles both arches at once (2 threads): 29.3 // 10 = 2 processes.
    assert vb.build_jobs(32045, 16, "9.0 12.0") == {"max_jobs": 4, "nvcc_threads": 2, "parallel": 2}


def test_explicit_values_win() -> None:
    assert vb.build_jobs(32045, 16, "12.0", max_jobs=12, nvcc_threads=2) == {
        "max_jobs": 12,
        "nvcc_threads": 2,
        "parallel": 6,
    }


def test_tunable_memory_per_job() -> None:
    assert vb.build_jobs(32045, 16, "12.0", gib_per_job=3.0)["max_jobs"] == 9


@pytest.mark.parametrize(("mem", "cores"), [(0, 4), (1024, 0), (-1, 2)])
def test_nonsense_host_facts_are_rejected(mem: int, cores: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        vb.build_jobs(mem, cores)


def test_arch_list_normalizes_separators_and_order() -> None:
    assert vb.arch_list("12.0;9.0a 8.0+PTX,12.0") == ["8.0+PTX", "9.0a", "12.0"]
    assert vb.sm_archs("12.0 9.0a 8.0+PTX") == ["sm_80", "sm_90a", "sm_120"]


def test_arch_list_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="sm_120"):
        vb.arch_list("sm_120")


# Printed by cuobjdump 13.0 on the GPU validation host for a test object built with
# -gencode arch=compute_120,code=sm_120 -gencode arch=compute_90,code=sm_90.
CUOBJDUMP_LIST_ELF = """ELF file    1: _C.abi3.1.sm_120.cubin
ELF file    2: _C.abi3.2.sm_90.cubin
ELF file    3: _C.abi3.3.sm_120.cubin
ELF file    4: _C.abi3.4.sm_90.cubin
"""


def test_cuobjdump_listing_covers_the_requested_archs() -> None:
    assert vb.missing_elf_archs(CUOBJDUMP_LIST_ELF, "12.0") == []
    assert vb.missing_elf_archs(CUOBJDUMP_LIST_ELF, "9.0 12.0") == []


def test_cuobjdump_listing_reports_missing_archs_exactly() -> None:
    assert vb.missing_elf_archs(CUOBJDUMP_LIST_ELF, "8.0 9.0a 12.0") == ["sm_80", "sm_90a"]
    assert vb.missing_elf_archs("", "12.0") == ["sm_120"]


def test_progress_from_ninja_steps_gives_percent_and_eta() -> None:
    log = "-- Configuring done\n[10/400] Building CUDA a.o\n[100/400] Building CXX b.o\n"
    p = vb.parse_progress(log, elapsed_s=300)
    assert (p["done"], p["total"], p["percent"]) == (100, 400, 25.0)
    assert p["eta_s"] == 900
    assert p["line"].startswith("[100/400]")
    assert vb.format_duration(p["eta_s"]) == "15m00s"


def test_progress_without_steps_reports_the_last_line() -> None:
    p = vb.parse_progress("Building wheel for vllm (pyproject.toml): started\n", 9)
    assert p["done"] is None
    assert p["eta_s"] is None
    assert "Building wheel" in p["line"]


@pytest.mark.parametrize(
    ("tail", "cause"),
    [
        ("c++: fatal error: Killed signal terminated program cc1plus", "oom"),
        ("nvcc fatal : Memory allocation failure\nKilled", "oom"),
        ("/bin/sh: 1: nvcc: not found", "missing_nvcc"),
        ("OSError: CUDA_HOME environment variable is not set.", "missing_nvcc"),
        ("ModuleNotFoundError: No module named 'torch'", "torch_mismatch"),
        (
            "RuntimeError: The detected CUDA version (12.8) mismatches the version that was "
            "used to compile PyTorch (13.0).",
            "torch_mismatch",
        ),
        ("fatal: unable to access 'https://github.com/nvidia/cutlass.git/'", "fetchcontent"),
        # vLLM 0.24.0's CMake configure on the (offline) GPU validation host:
        (
            "CMake Error at cutlass-subbuild/cutlass-populate-prefix/tmp/"
            "cutlass-populate-gitclone.cmake:55 (message):\n  Failed to clone repository:",
            "fetchcontent",
        ),
        ("error: something else entirely", "unknown"),
    ],
)
def test_failure_causes_are_recognized(tail: str, cause: str) -> None:
    assert vb.classify_failure(tail)["cause"] == cause
