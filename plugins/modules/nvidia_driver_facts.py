#!/usr/bin/python
"""Ansible module: the NVIDIA driver state of a host, read from sysfs and procfs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_driver_facts
short_description: NVIDIA GPUs, the loaded kernel module and Secure Boot, without lspci or mokutil
description:
  - Reads only kernel interfaces, so it works on minimal hosts and inside containers. PCI
    display/3D controllers of vendor 0x10de from C(<sysfs_path>/bus/pci/devices); the loaded
    NVIDIA module's version and flavour (open or proprietary) from
    C(<procfs_path>/driver/nvidia/version); nouveau from C(<procfs_path>/modules); Secure Boot
    from the UEFI SecureBoot variable in efivarfs (the same definition as host_gpu_facts).
  - Used by the nvidia_driver role before and after it installs a driver. Read-only; supports
    check mode.
options:
  sysfs_path:
    description: Where sysfs is mounted (tests point it at a fixture tree).
    type: path
    default: /sys
  procfs_path:
    description: Where procfs is mounted (tests point it at a fixture tree).
    type: path
    default: /proc
author: gpuserve team
"""

EXAMPLES = r"""
- name: Read the NVIDIA driver state
  gpuserve.vllm.nvidia_driver_facts:
  register: driver_state
"""

RETURN = r"""
gpus:
  description: NVIDIA display/3D controllers, sorted by PCI address.
  returned: always
  type: list
  elements: dict
  sample: [{"address": "0000:01:00.0", "device": "0x2b85", "class": "0x030000"}]
module_loaded:
  description: Whether an NVIDIA kernel module is loaded.
  returned: always
  type: bool
module_version:
  description: The loaded module's version ("" when none is loaded).
  returned: always
  type: str
  sample: 580.95.05
module_flavour:
  description: open, proprietary, or "" when no module is loaded.
  returned: always
  type: str
nouveau_loaded:
  description: Whether nouveau is loaded.
  returned: always
  type: bool
secure_boot:
  description: enabled, disabled, not-uefi or unknown.
  returned: always
  type: str
"""

import re
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuserve.vllm.plugins.module_utils.secure_boot import secure_boot_state

NVIDIA_VENDOR = "0x10de"
_VERSION_RE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def pci_gpus(sysfs: Path) -> list[dict[str, str]]:
    """NVIDIA devices of PCI class 0x03 (display/3D), sorted by address."""
    gpus = []
    devices = sysfs / "bus/pci/devices"
    for dev in sorted(devices.glob("*")) if devices.is_dir() else []:
        if read_text(dev / "vendor").lower() != NVIDIA_VENDOR:
            continue
        pci_class = read_text(dev / "class").lower()
        if not pci_class.startswith("0x03"):
            continue
        gpus.append(
            {"address": dev.name, "device": read_text(dev / "device").lower(), "class": pci_class}
        )
    return gpus


def parse_module_version(text: str) -> tuple[str, str]:
    """(version, flavour) from the content of /proc/driver/nvidia/version."""
    if not text:
        return "", ""
    match = _VERSION_RE.search(text)
    version = match.group(1) if match else ""
    flavour = "open" if "Open Kernel Module" in text else "proprietary"
    return version, flavour


def module_loaded(procfs: Path, name: str) -> bool:
    return any(line.split(" ", 1)[0] == name for line in read_text(procfs / "modules").splitlines())


def gather(sysfs: Path, procfs: Path) -> dict[str, object]:
    version_text = read_text(procfs / "driver/nvidia/version")
    version, flavour = parse_module_version(version_text)
    return {
        "gpus": pci_gpus(sysfs),
        "module_loaded": bool(version_text),
        "module_version": version,
        "module_flavour": flavour,
        "nouveau_loaded": module_loaded(procfs, "nouveau"),
        "secure_boot": secure_boot_state(sysfs / "firmware/efi"),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "sysfs_path": {"type": "path", "default": "/sys"},
            "procfs_path": {"type": "path", "default": "/proc"},
        },
        supports_check_mode=True,
    )
    state = gather(Path(module.params["sysfs_path"]), Path(module.params["procfs_path"]))
    module.exit_json(changed=False, **state)


if __name__ == "__main__":
    main()
