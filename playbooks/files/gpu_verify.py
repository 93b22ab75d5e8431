#!/usr/bin/env python3
"""Read-only day-2 check of a GPU host: driver, GPUs, CUDA toolkit, NCCL, torch in a venv.

Run by playbooks/verify.yml, or standalone (no Ansible needed):
    python3 gpu_verify.py --venv /opt/torch/.venv --expect-driver-branch 580 \
        --expect-cuda 13.0 --nccl-min 2.26.5 --format table --report /tmp/verify.json
Needs only the Python standard library; the torch checks run in the venv's own python.
Nothing is installed or changed; no network, no systemd, no lspci needed.

Each check has a status: pass, fail, warn (reported, not fatal), no_gpu (needs a GPU or a
loaded NVIDIA driver the host does not have) or skipped (not applicable). The exit code is 1
when any check failed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ALLREDUCE_ELEMENTS = 4 * 1024 * 1024  # 16 MiB of float32: far above NCCL's 512 KiB protocol switch


def check(name: str, status: str, detail: str, **data: object) -> dict[str, object]:
    return {"name": name, "status": status, "detail": detail, **data}


def run(cmd: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# --- driver and GPUs -------------------------------------------------------------------------
def parse_driver(text: str) -> dict[str, str]:
    """Version, branch and flavour from /proc/driver/nvidia/version."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return {}
    version = ".".join(g for g in match.groups() if g is not None)
    flavour = "open" if "Open Kernel Module" in text else "proprietary"
    return {"version": version, "branch": match.group(1), "flavour": flavour}


def module_license_flavour() -> str:
    """open / proprietary from modinfo's license (Dual MIT/GPL = open), "" when unknown."""
    code, out = run(["modinfo", "-F", "license", "nvidia"], timeout=10)
    if code != 0 or not out:
        return ""
    return "open" if "MIT" in out else "proprietary"


def pci_gpu_count(root: Path = Path("/")) -> int:
    count = 0
    for dev in (root / "sys/bus/pci/devices").glob("*"):
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            pci_class = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == "0x10de" and pci_class.startswith("0x03"):
            count += 1
    return count


def parse_smi(csv: str) -> list[dict[str, str]]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,compute_cap,persistence_mode`."""
    gpus = []
    for line in csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 5 and parts[0].isdigit():
            gpus.append(
                {
                    "index": parts[0],
                    "name": parts[1],
                    "memory": parts[2],
                    "compute_cap": parts[3],
                    "persistence_mode": parts[4],
                }
            )
    return gpus


def sm_of(compute_cap: str) -> str:
    """'9.0' -> 'sm_90', '12.0' -> 'sm_120'."""
    major, _, minor = compute_cap.partition(".")
    return f"sm_{major}{minor or '0'}"


def driver_checks(branch: str, proc_version: Path) -> tuple[list[dict[str, object]], list]:
    checks: list[dict[str, object]] = []
    try:
        text = proc_version.read_text()
    except OSError:
        text = ""
    pci = pci_gpu_count()
    if not text:
        why = f"no NVIDIA driver loaded ({proc_version} absent); {pci} NVIDIA GPU(s) on the PCI bus"
        status = "fail" if pci else "no_gpu"
        checks.append(check("driver", status, why, pci_gpus=pci))
        return checks, []
    info = parse_driver(text)
    flavour = info.get("flavour") or module_license_flavour()
    ok_branch = not branch or info.get("branch") == str(branch)
    checks.append(
        check(
            "driver",
            "pass" if ok_branch else "fail",
            f"{info.get('version', '?')} (branch {info.get('branch', '?')},"
            f" expected {branch or 'any'})",
            **info,
        )
    )
    checks.append(
        check(
            "kernel module",
            "pass" if flavour == "open" else "fail",
            f"{flavour or 'unknown'} kernel module (Blackwell needs the open modules)",
            flavour=flavour,
        )
    )
    smi = shutil.which("nvidia-smi") or "/usr/bin/nvidia-smi"
    query = "index,name,memory.total,compute_cap,persistence_mode"
    code, out = run([smi, f"--query-gpu={query}", "--format=csv,noheader"], timeout=60)
    gpus = parse_smi(out) if code == 0 else []
    if code != 0:
        checks.append(check("gpus", "fail", f"nvidia-smi failed: {out[-300:]}"))
        return checks, gpus
    count_ok = len(gpus) == pci or pci == 0
    checks.append(
        check(
            "gpus",
            "pass" if gpus and count_ok else "fail",
            f"nvidia-smi sees {len(gpus)} GPU(s), PCI bus has {pci}",
            count=len(gpus),
            pci_gpus=pci,
        )
    )
    for gpu in gpus:
        persistent = gpu["persistence_mode"].lower() == "enabled"
        checks.append(
            check(
                f"gpu {gpu['index']}",
                "pass" if persistent else "warn",
                f"{gpu['name']}, {gpu['memory']}, compute {gpu['compute_cap']}"
                f" ({sm_of(gpu['compute_cap'])}), persistence {gpu['persistence_mode']}",
                gpu_name=gpu["name"],
                sm=sm_of(gpu["compute_cap"]),
                **{k: v for k, v in gpu.items() if k != "name"},
            )
        )
    return checks, gpus


# --- CUDA toolkit and system NCCL --------------------------------------------------------------
def toolkit_release(cuda_home: Path) -> tuple[str, str]:
    """(X.Y release, source) from nvcc --version, else version.json; ("", why) when absent."""
    nvcc = cuda_home / "bin" / "nvcc"
    if nvcc.exists():
        code, out = run([str(nvcc), "--version"], timeout=30)
        match = re.search(r"release (\d+\.\d+)", out)
        if code == 0 and match:
            return match.group(1), f"{nvcc} --version"
    version_json = cuda_home / "version.json"
    try:
        data = json.loads(version_json.read_text())
        version = data["cuda"]["version"]
        return ".".join(version.split(".")[:2]), f"{version_json} ({version}); no nvcc"
    except (OSError, ValueError, KeyError):
        return "", f"no nvcc and no version.json under {cuda_home}"


def cuda_check(expected: str, cuda_home: Path) -> dict[str, object]:
    release, source = toolkit_release(cuda_home)
    if not release:
        return check("cuda toolkit", "fail" if expected else "skipped", source)
    ok = not expected or release == expected
    detail = f"release {release} from {source}, expected {expected or 'any'}"
    return check("cuda toolkit", "pass" if ok else "fail", detail, release=release)


def decode_nccl(code: int) -> str:
    if code >= 20900:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def system_nccl_version() -> str:
    try:
        lib = ctypes.CDLL("libnccl.so.2")
        code = ctypes.c_int(0)
        if lib.ncclGetVersion(ctypes.byref(code)) != 0:
            return ""
    except (OSError, AttributeError):
        return ""
    return decode_nccl(code.value)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def nccl_check(name: str, version: str, minimum: str, missing: str) -> dict[str, object]:
    if not version:
        return check(name, "fail" if minimum else "skipped", missing)
    ok = not minimum or version_tuple(version) >= version_tuple(minimum)
    detail = f"{version} (need >= {minimum or 'any'})"
    return check(name, "pass" if ok else "fail", detail, version=version)


# --- torch in the venv -------------------------------------------------------------------------
def torch_probe() -> dict[str, object]:
    """Runs inside the venv's python."""
    import torch

    out: dict[str, object] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cuda_available": torch.cuda.is_available(),
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "devices": [],
        "nccl": "",
    }
    if torch.cuda.is_available():
        out["devices"] = [
            "{}.{}".format(*torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count())
        ]
    try:
        out["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version())
    except (AttributeError, RuntimeError) as exc:
        out["nccl_error"] = str(exc)
    return out


def allreduce_rank(rank: int, world: int, port: int) -> int:
    """One process of the all-reduce; rank r contributes r+1 everywhere."""
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    data = torch.full((ALLREDUCE_ELEMENTS,), float(rank + 1), device=f"cuda:{rank}")
    dist.all_reduce(data)
    torch.cuda.synchronize()
    expected = world * (world + 1) / 2
    ok = bool(torch.all(data == expected).item())
    dist.destroy_process_group()
    print(
        json.dumps({"rank": rank, "ok": ok, "value": float(data[0].item()), "expected": expected})
    )
    return 0 if ok else 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_allreduce(python: str, world: int, timeout: float) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
    procs = [
        subprocess.Popen(
            [
                python,
                __file__,
                "--allreduce-rank",
                str(r),
                "--world",
                str(world),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    started = time.monotonic()
    results, errors = [], []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors.append("timeout")
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            results.append(json.loads(lines[-1]))
        else:
            errors.append(err.strip()[-400:] or f"rank exited {proc.returncode}")
    ok = not errors and len(results) == world and all(r["ok"] for r in results)
    expected = world * (world + 1) / 2
    detail = (
        f"{world} GPU(s), sum {results[0]['value'] if results else '?'} (expected {expected:g})"
    )
    return check(
        "torch all-reduce",
        "pass" if ok else "fail",
        detail if ok else f"{detail}; errors: {errors}",
        seconds=round(time.monotonic() - started, 1),
    )


def torch_checks(venv: Path, nccl_min: str, timeout: float) -> list[dict[str, object]]:
    python = venv / "bin" / "python"
    if not python.exists():
        return [check("torch venv", "skipped", f"no venv at {venv}")]
    code, out = run([str(python), __file__, "--torch-probe"], timeout=180)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if code != 0 or not lines:
        return [check("torch venv", "fail", f"torch probe failed in {venv}: {out[-400:]}")]
    probe = json.loads(lines[-1])
    checks = [
        check(
            "torch",
            "pass",
            f"torch {probe['torch']} (CUDA {probe['cuda'] or 'none'}) in {venv}",
            **{k: probe[k] for k in ("torch", "cuda")},
        )
    ]
    nccl = str(probe.get("nccl", ""))
    checks.append(
        nccl_check("torch nccl", nccl, nccl_min, f"torch.cuda.nccl.version() failed: {probe}")
    )
    devices = [str(d) for d in probe.get("devices", [])]
    if not probe.get("cuda_available") or not devices:
        checks.append(check("torch arch list", "no_gpu", "torch sees no CUDA device"))
        checks.append(check("torch all-reduce", "no_gpu", "torch sees no CUDA device"))
        return checks
    arch = [str(a) for a in probe.get("arch_list", [])]
    missing = sorted({sm_of(d) for d in devices} - set(arch))
    checks.append(
        check(
            "torch arch list",
            "fail" if missing else "pass",
            f"{' '.join(arch)}; GPUs need {' '.join(sorted({sm_of(d) for d in devices}))}"
            + (f"; missing {' '.join(missing)}" if missing else ""),
            arch_list=arch,
        )
    )
    checks.append(run_allreduce(str(python), len(devices), timeout))
    return checks


# --- report ------------------------------------------------------------------------------------
def collect(args: argparse.Namespace) -> dict[str, object]:
    checks, _gpus = driver_checks(args.expect_driver_branch, Path(args.proc_version))
    checks.append(cuda_check(args.expect_cuda, Path(args.cuda_home)))
    checks.append(
        nccl_check(
            "system nccl", system_nccl_version(), args.nccl_min, "libnccl.so.2 not found (ctypes)"
        )
    )
    checks += torch_checks(Path(args.venv), args.nccl_min, args.allreduce_timeout)
    failed = [c["name"] for c in checks if c["status"] == "fail"]
    return {
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": "fail" if failed else "pass",
        "failed": failed,
        "checks": checks,
    }


def table(report: dict[str, object]) -> str:
    rows = [(str(c["name"]), str(c["status"]).upper(), str(c["detail"])) for c in report["checks"]]  # type: ignore[union-attr]
    width = max(len(r[0]) for r in rows)
    lines = [f"gpu verify: {report['host']} ({report['time']}): {str(report['result']).upper()}"]
    lines += [f"  {name:<{width}}  {status:<7} {detail}" for name, status, detail in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read-only GPU host check.")
    parser.add_argument("--venv", default="/opt/vllm/venv")  # vllm_build_venv
    parser.add_argument("--expect-driver-branch", default="")
    parser.add_argument("--expect-cuda", default="")
    parser.add_argument("--nccl-min", default="")
    parser.add_argument("--cuda-home", default="/usr/local/cuda")
    parser.add_argument("--proc-version", default="/proc/driver/nvidia/version")
    parser.add_argument("--allreduce-timeout", type=float, default=300)
    parser.add_argument("--format", choices=["json", "table"], default="json")
    parser.add_argument("--report", help="also write the JSON report to this file")
    parser.add_argument("--torch-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_probe:
        print(json.dumps(torch_probe()))
        return 0
    if args.allreduce_rank is not None:
        return allreduce_rank(args.allreduce_rank, args.world, args.port)
    report = collect(args)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report) if args.format == "table" else json.dumps(report))
    return 1 if report["result"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
