"""Record what PyPI says the version matrix's pins require: `make version-lock`.

For every pinned profile of roles/gpuserve/defaults/main.yml this asks pip (a dry-run
resolve, `pip install --dry-run --no-deps --report`, which reads the wheels' published
metadata without installing anything) for:
- the vLLM release's wheel: the torch version it requires (`Requires-Dist: torch==...`);
- the torch release's wheel: the CUDA runtime it is built for (`nvidia-cuda-runtime-cu12==12.8.x`
  before 2.11, `cuda-toolkit[...]==13.0.x` from 2.11) and the NCCL wheel it loads
  (`nvidia-nccl-cu12/cu13==...`: the NCCL torch and vLLM actually use, not the apt one).

The result, tests/version-lock.json, is committed; tests/unit/test_version_matrix.py checks the
matrix against it in CI (no network there), so the matrix can never pair versions pip would
refuse. Rerun after changing a pin. Needs PyPI (or a mirror pip is configured for).
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
MATRIX_FILE = PROJECT / "roles/gpuserve/defaults/main.yml"
LOCK_FILE = PROJECT / "tests/version-lock.json"
# Wheels are resolved for the Python and platform of an Ubuntu 24.04 x86_64 GPU host.
PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_35_x86_64",
)
_CUDA_RUNTIME = re.compile(r"^(nvidia-cuda-runtime-cu\d+|cuda-toolkit)(\[[^\]]*\])?==(\d+\.\d+)\.")
_NCCL = re.compile(r"^nvidia-nccl-cu(\d+)==([0-9.]+)")
_TORCH_PIN = re.compile(r"^torch\s*(==[0-9.]+)")


def requirement(req: str) -> str:
    """A Requires-Dist entry without its environment marker."""
    return req.split(";")[0].replace(" ", "")


def wheel_metadata(name: str, version: str) -> dict:
    """The published metadata of `name==version`'s wheel for the GPU host, via pip's report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version",
            PYTHON,
            "--target",
            str(Path(tmp) / "target"),
            "--report",
            str(report),
            *(arg for p in PLATFORMS for arg in ("--platform", p)),
            f"{name}=={version}",
        ]
        subprocess.run(cmd, check=True)
        item = json.loads(report.read_text())["install"][0]
    hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
    return {
        "wheel": item["download_info"]["url"].rsplit("/", 1)[-1],
        "sha256": hashes.get("sha256", ""),
        "requires_dist": [requirement(r) for r in item["metadata"].get("requires_dist", [])],
    }


def vllm_entry(version: str) -> dict:
    meta = wheel_metadata("vllm", version)
    pins = [m.group(1) for r in meta["requires_dist"] if (m := _TORCH_PIN.match(r))]
    if not pins:
        raise SystemExit(f"vllm {version}: no torch== requirement in {meta['wheel']}")
    return {"wheel": meta["wheel"], "sha256": meta["sha256"], "torch": pins[0]}


def torch_entry(version: str) -> dict:
    meta = wheel_metadata("torch", version)
    cuda = [m.group(3) for r in meta["requires_dist"] if (m := _CUDA_RUNTIME.match(r))]
    nccl = [m.group(2) for r in meta["requires_dist"] if (m := _NCCL.match(r))]
    if not cuda or not nccl:
        raise SystemExit(f"torch {version}: no CUDA runtime or NCCL requirement in {meta['wheel']}")
    return {
        "wheel": meta["wheel"],
        "sha256": meta["sha256"],
        "cuda": cuda[0],
        "nccl": nccl[0],
        "cuda_requirements": [
            r for r in meta["requires_dist"] if r.startswith(("nvidia-", "cuda-"))
        ],
    }


def newest_release(name: str) -> str:
    """The newest final release of `name` on the index (`pip index versions`)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "--python-version", PYTHON, name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(rf"^{re.escape(name)} \(([^)]+)\)", out, re.MULTILINE)
    if not match:
        raise SystemExit(f"pip index versions {name}: no version in {out!r}")
    return match.group(1)


def main() -> int:
    matrix = yaml.safe_load(MATRIX_FILE.read_text())["gpuserve_version_matrix"]
    pinned = {name: p for name, p in matrix.items() if p.get("pinned", True)}
    lock: dict = {
        "generated": datetime.date.today().isoformat(),
        "how": "make version-lock (tests/version_lock.py): "
        "pip install --dry-run --no-deps --report, "
        f"Python {PYTHON}, {' '.join(PLATFORMS)}",
        "newest_release": {name: newest_release(name) for name in ("vllm", "torch")},
        "vllm": {},
        "torch": {},
    }
    for name, profile in sorted(pinned.items()):
        print(
            f"{name}: vllm {profile['vllm_version']}, torch {profile['torch_version']}",
            file=sys.stderr,
        )
        lock["vllm"].setdefault(
            str(profile["vllm_version"]), vllm_entry(str(profile["vllm_version"]))
        )
        lock["torch"].setdefault(
            str(profile["torch_version"]), torch_entry(str(profile["torch_version"]))
        )
    LOCK_FILE.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    print(f"wrote {LOCK_FILE.relative_to(PROJECT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
