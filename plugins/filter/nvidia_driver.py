"""Filters of the nvidia_driver role: which driver packages a host gets.

The package names are the distributions' own (see tests/unit/test_nvidia_driver_packages.py
for where each was read); the rules that pick them for a host live here, unit-tested.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

DOCUMENTATION = """
name: nvidia_driver
short_description: Filters of the gpuserve.vllm.nvidia_driver role
description:
  - nvidia_driver_package_plan (the driver packages for a host's source, branch, OS and
    kernel), nvidia_driver_kernel_flavours (Ubuntu kernel flavours of the running kernel).
"""

# Package sets per flavour and distribution; "{b}" is the driver branch. The first entry
# of VERSION_PACKAGE carries the driver version (installed as <name>=<version>, pinned).
PACKAGE_SETS: dict[str, dict[str, list[str]]] = {
    # NVIDIA's repository, branches <= 580: the open DKMS package, then the branch meta.
    "cuda_repo_legacy": {
        "Debian": ["nvidia-kernel-open-dkms", "cuda-drivers-{b}"],
        "Ubuntu": ["nvidia-dkms-{b}-open", "cuda-drivers-{b}"],
    },
    # NVIDIA's repository, branches >= 590: nvidia-driver-pinning-<b> (installed first)
    # selects the branch.
    "cuda_repo_pinning": {"Debian": ["nvidia-open"], "Ubuntu": ["nvidia-open"]},
    # Ubuntu archive with DKMS: nvidia-headless-<b>-server-open and nvidia-driver-<b>-open
    # pull nvidia-dkms-*.
    "ubuntu_archive_headless": {
        "Ubuntu": ["nvidia-headless-{b}-server-open", "nvidia-utils-{b}-server"]
    },
    "ubuntu_archive_desktop": {"Ubuntu": ["nvidia-driver-{b}-open"]},
    # Ubuntu archive with Canonical's signed modules: the no-DKMS userspace of the same line.
    "ubuntu_archive_headless_signed": {
        "Ubuntu": ["nvidia-headless-no-dkms-{b}-server-open", "nvidia-utils-{b}-server"]
    },
    "ubuntu_archive_desktop_signed": {
        "Ubuntu": ["nvidia-headless-no-dkms-{b}-open", "nvidia-utils-{b}"]
    },
}
VERSION_PACKAGE: dict[str, str] = {
    "cuda_repo_legacy": "cuda-drivers-{b}",
    "cuda_repo_pinning": "nvidia-open",
    "ubuntu_archive_headless": "nvidia-headless-{b}-server-open",
    "ubuntu_archive_desktop": "nvidia-driver-{b}-open",
    "ubuntu_archive_headless_signed": "nvidia-headless-no-dkms-{b}-server-open",
    "ubuntu_archive_desktop_signed": "nvidia-headless-no-dkms-{b}-open",
}
# Canonical's precompiled modules (linux-restricted-modules): one package per kernel ABI
# ("{k}" = uname -r) and one meta package per kernel flavour ("{k}" = generic,
# generic-hwe-24.04, ...) that follows that flavour's kernel updates.
SIGNED_MODULES: dict[str, str] = {
    "ubuntu_archive_headless_signed": "linux-modules-nvidia-{b}-server-open-{k}",
    "ubuntu_archive_desktop_signed": "linux-modules-nvidia-{b}-open-{k}",
}

# An Ubuntu archive kernel: <version>-<abi>-<flavour>, e.g. 6.8.0-51-generic, 6.8.0-51-lowlatency.
_UBUNTU_KERNEL = re.compile(r"\d+\.\d+\.\d+-\d+-(?P<flavour>[a-z0-9][a-z0-9-]*)")


def kernel_flavours(kernel: str, installed: Iterable[str]) -> list[str]:
    """Flavours of the installed linux-image-<flavour> meta packages that match the running kernel.

    `uname -r` says generic for GA and HWE kernels alike (6.8.0-51-generic, 6.11.0-19-generic):
    only the installed meta package (linux-image-generic vs linux-image-generic-hwe-24.04)
    tells them apart, as ubuntu-drivers does. Both may be installed; each gets its modules.
    """
    match = _UBUNTU_KERNEL.fullmatch(kernel)
    if not match:
        return []
    base = re.escape(match.group("flavour"))
    meta = re.compile(rf"linux-image-(?P<f>{base}(?:-hwe-\d+\.\d+(?:-edge)?)?)")
    return sorted({m.group("f") for name in installed if (m := meta.fullmatch(name))})


def flavour(source: str, branch: int, headless: bool, signed: bool) -> str:
    if source == "ubuntu_archive":
        line = "headless" if headless else "desktop"
        return f"ubuntu_archive_{line}" + ("_signed" if signed else "")
    return "cuda_repo_pinning" if branch >= 590 else "cuda_repo_legacy"


def package_plan(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The driver packages for one host.

    spec: source, branch, distribution, kernel (uname -r), installed (package names),
    headless, signed, kernel_flavours (override; [] derives them), packages (override; []).
    Returns flavour, uses_dkms, version_package, packages, kernel_flavours.
    """
    branch = int(spec["branch"])
    key = flavour(str(spec["source"]), branch, bool(spec["headless"]), bool(spec["signed"]))
    sets = PACKAGE_SETS[key]
    distribution = str(spec["distribution"])
    if not spec.get("packages") and distribution not in sets:
        raise ValueError(
            f"no driver packages for {distribution} with nvidia_driver_source={spec['source']}"
            f" (known: {', '.join(sorted(sets))})"
        )
    b = str(branch)
    packages = [p.replace("{b}", b) for p in (spec.get("packages") or sets[distribution])]
    flavours: list[str] = []
    if key in SIGNED_MODULES:
        flavours = list(spec.get("kernel_flavours") or []) or kernel_flavours(
            str(spec["kernel"]), spec.get("installed") or []
        )
        modules = SIGNED_MODULES[key].replace("{b}", b)
        # The running kernel's own ABI package loads now; the meta packages follow kernel updates.
        for k in [str(spec["kernel"]), *flavours]:
            name = modules.replace("{k}", k)
            if name not in packages:
                packages.append(name)
    return {
        "flavour": key,
        "uses_dkms": key not in SIGNED_MODULES,
        "version_package": VERSION_PACKAGE[key].replace("{b}", b),
        "packages": packages,
        "kernel_flavours": flavours,
    }


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "nvidia_driver_package_plan": package_plan,
            "nvidia_driver_kernel_flavours": kernel_flavours,
        }
