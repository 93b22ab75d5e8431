"""Filters of the vllm_build role: build parallelism, the wheel cache key, arch lists.

The same pure functions serve the `vllm_build_wait` action plugin (progress and
failure diagnosis of a running build), so every rule of the role that is more
than a lookup lives here and is unit-tested (tests/unit/test_vllm_build_*.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DOCUMENTATION = """
name: vllm_build
short_description: Filters of the gpuserve.vllm.vllm_build role
description:
  - vllm_build_jobs, vllm_build_cache_key, vllm_build_arch_list, vllm_build_sm_archs,
    vllm_build_missing_elf_archs.
"""

# --- build parallelism --------------------------------------------------------------
# One nvcc job of vLLM's kernels peaks at 3-5 GiB (per target arch it compiles at
# once); cc1plus on torch headers stays below that. Size from RAM first, cores second.
DEFAULT_GIB_PER_JOB = 5.0
DEFAULT_RESERVE_GIB = 2.0
MAX_NVCC_THREADS = 4


def arch_list(value: str | Sequence[str]) -> list[str]:
    """Normalize TORCH_CUDA_ARCH_LIST ("12.0", "9.0 12.0", "8.0;9.0a+PTX") to a sorted list."""
    items = value if isinstance(value, list | tuple) else re.split(r"[\s;,]+", str(value))
    archs = {str(a).strip() for a in items if str(a).strip()}
    bad = sorted(a for a in archs if not re.fullmatch(r"\d+\.\d+[af]?(\+PTX)?", a))
    if bad:
        raise ValueError(f"not a CUDA arch (want e.g. 12.0, 9.0a, 8.0+PTX): {', '.join(bad)}")
    return sorted(archs, key=lambda a: (float(re.match(r"\d+\.\d+", a).group()), a))  # type: ignore[union-attr]


def sm_archs(value: str | Sequence[str]) -> list[str]:
    """TORCH_CUDA_ARCH_LIST entries as torch.cuda.get_arch_list() names them: 12.0 -> sm_120."""
    out = []
    for arch in arch_list(value):
        base = arch.removesuffix("+PTX")
        major, minor = base.split(".")
        out.append(f"sm_{major}{minor}")
    return out


def missing_elf_archs(listing: str, archs: str | Sequence[str]) -> list[str]:
    """Requested archs without an ELF in `cuobjdump --list-elf` output (sm_90 != sm_90a).

    cuobjdump names each image like `ELF file    1: _C.abi3.1.sm_120.cubin`.
    """
    present = set(re.findall(r"\.(sm_\d+[af]?)\.cubin", listing))
    return [sm for sm in sm_archs(archs) if sm not in present]


def build_jobs(
    mem_mb: int,
    cores: int,
    archs: str | Sequence[str] = "12.0",
    gib_per_job: float = DEFAULT_GIB_PER_JOB,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
    max_jobs: int = 0,
    nvcc_threads: int = 0,
) -> dict[str, int]:
    """MAX_JOBS and NVCC_THREADS for a host (0 = compute; a positive value is kept).

    nvcc_threads = number of target archs, capped at 4 (nvcc's --threads only
    parallelizes across archs: with one arch more threads add memory, not speed).
    parallel     = min(cores // nvcc_threads,
                       (RAM_GiB - reserve_gib) // (gib_per_job * nvcc_threads)), at least 1
    max_jobs     = parallel * nvcc_threads   (vLLM's setup.py runs MAX_JOBS // NVCC_THREADS
                   compiler processes, each with NVCC_THREADS threads)
    """
    if mem_mb <= 0 or cores <= 0:
        raise ValueError(f"need positive RAM and cores, got mem_mb={mem_mb} cores={cores}")
    if gib_per_job <= 0 or reserve_gib < 0:
        raise ValueError("gib_per_job must be > 0 and reserve_gib >= 0")
    threads = int(nvcc_threads) or max(1, min(len(arch_list(archs)), MAX_NVCC_THREADS))
    if max_jobs:
        jobs = int(max_jobs)
        return {"max_jobs": jobs, "nvcc_threads": threads, "parallel": max(1, jobs // threads)}
    usable_gib = mem_mb / 1024 - reserve_gib
    by_mem = math.floor(usable_gib / (gib_per_job * threads)) if usable_gib > 0 else 0
    parallel = max(1, min(cores // threads, by_mem))
    return {"max_jobs": parallel * threads, "nvcc_threads": threads, "parallel": parallel}


# --- the wheel cache key --------------------------------------------------------------
KEY_PARTS = (
    "vllm_ref",
    "patches",
    "torch_version",
    "cuda_version",
    "arch_list",
    "python_version",
    "target_device",
)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", value).strip("_") or "none"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A filesystem-safe key: readable prefix + sha256 over every part (canonical JSON).

    Parts: vllm_ref, patches (list of sha256, in order), torch_version, cuda_version,
    arch_list, python_version, target_device; optional `extra` (a dict of build env) and
    `version` (the vLLM version, for the readable prefix).
    A missing part is an error: a silent default would let two builds share a key.
    """
    missing = [p for p in KEY_PARTS if p not in parts or parts[p] in (None, "")]
    if missing:
        raise ValueError(f"cache key parts missing: {', '.join(missing)}")
    canon = {p: parts[p] for p in KEY_PARTS}
    canon["arch_list"] = arch_list(parts["arch_list"])
    canon["patches"] = list(parts["patches"])
    canon["extra"] = dict(sorted((parts.get("extra") or {}).items()))
    if parts.get("version"):
        canon["version"] = str(parts["version"])
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]
    ref = str(parts.get("version") or str(parts["vllm_ref"]).rsplit("@", 1)[-1])
    readable = "-".join(
        [
            "vllm" + _slug(ref)[:24],
            "torch" + _slug(str(parts["torch_version"])),
            "cu" + _slug(str(parts["cuda_version"])),
            "py" + _slug(str(parts["python_version"])),
            _slug(str(parts["target_device"])),
        ]
    )
    return f"{readable}-{digest}"


# --- progress of a running build ------------------------------------------------------
_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]", re.MULTILINE)


def parse_progress(log_tail: str, elapsed_s: float, started_step: int = 0) -> dict[str, Any]:
    """The last ninja `[n/m]` step in the log tail, as a percentage and an ETA.

    ETA extrapolates the rate since the build started (steps done / elapsed); with no
    step yet (configure, or a build without CMake) done/total are None.
    """
    steps = _STEP.findall(log_tail)
    lines = [ln for ln in log_tail.splitlines() if ln.strip()]
    last_line = lines[-1][-160:] if lines else ""
    if not steps:
        return {"done": None, "total": None, "percent": None, "eta_s": None, "line": last_line}
    done, total = (int(x) for x in steps[-1])
    percent = round(100.0 * done / total, 1) if total else 0.0
    rate_done = done - started_step
    eta = None
    if rate_done > 0 and elapsed_s > 0 and total >= done:
        eta = round((total - done) * elapsed_s / rate_done)
    return {"done": done, "total": total, "percent": percent, "eta_s": eta, "line": last_line}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --- why a build failed ------------------------------------------------------------------
_CAUSES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "oom",
        re.compile(
            r"Killed signal terminated program|fatal error: Killed|\bKilled\b|"
            r"out of memory|Cannot allocate memory|signal 9|std::bad_alloc",
            re.IGNORECASE,
        ),
        "a compiler was killed for memory (OOM): lower vllm_build_max_jobs or raise "
        "vllm_build_gib_per_job, and check `dmesg | grep -i oom`",
    ),
    (
        "missing_nvcc",
        re.compile(
            r"nvcc: (command )?not found|Failed to find nvcc|No CUDA toolkit found|"
            r"CUDA_HOME environment variable is not set|CMAKE_CUDA_COMPILER.*NOTFOUND|"
            r"Could not find nvcc|No CMAKE_CUDA_COMPILER could be found",
            re.IGNORECASE,
        ),
        "nvcc was not found: install the cuda_toolkit role and check vllm_build_cuda_home "
        "(it must hold bin/nvcc)",
    ),
    (
        "torch_mismatch",
        re.compile(
            r"No module named '?torch'?|mismatches the version that was used to compile "
            r"PyTorch|undefined symbol: _ZN\w*c10|torch\S* is not installed|"
            r"requires torch|incompatible torch|Torch not compiled with CUDA",
            re.IGNORECASE,
        ),
        "torch and the build disagree: the venv's torch must be the matrix's build for "
        "vllm_build_cuda_version (check torch.version.cuda and use_existing_torch.py ran)",
    ),
    (
        "fetchcontent",
        re.compile(
            r"Failed to clone|fatal: unable to access|Could not resolve host|"
            r"CMake Error.*(FetchContent|_deps)"
        ),
        "a CMake FetchContent download failed: provide the sources through "
        "vllm_build_fetchcontent_src_dirs (air-gapped mode)",
    ),
]


def classify_failure(log_tail: str) -> dict[str, str]:
    """The likely cause of a failed build, from the tail of its log."""
    for cause, pattern, hint in _CAUSES:
        if pattern.search(log_tail):
            return {"cause": cause, "hint": hint}
    return {"cause": "unknown", "hint": "read the log tail above; the full log is on the host"}


class FilterModule:
    """gpuserve.vllm.vllm_build_* filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "vllm_build_jobs": build_jobs,
            "vllm_build_cache_key": cache_key,
            "vllm_build_arch_list": arch_list,
            "vllm_build_sm_archs": sm_archs,
            "vllm_build_missing_elf_archs": missing_elf_archs,
        }
