#!/usr/bin/python
"""Ansible module: NVIDIA GPUs and Secure Boot state, read from sysfs and procfs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_gpu_facts
short_description: Find NVIDIA GPUs and the Secure Boot state without lspci or mokutil
description:
  - Lists PCI display controllers of vendor 0x10de from sysfs. Minimal hosts and
    containers have no C(lspci), so sysfs is the source of truth.
  - Names and compute capabilities come from C(/proc/driver/nvidia/gpus) when a driver is
    loaded, else from a table of known device IDs; unknown IDs are reported as such.
  - Reads Secure Boot from the UEFI SecureBoot variable in efivarfs (no C(mokutil) needed),
    through the collection's one definition of it (module_utils/secure_boot.py).
  - Read-only; supports check mode.
options:
  pci_devices_path:
    description: Where PCI devices are listed.
    type: path
    default: /sys/bus/pci/devices
  nvidia_proc_path:
    description: The NVIDIA driver's per-GPU directory.
    type: path
    default: /proc/driver/nvidia/gpus
  efi_path:
    description: The UEFI firmware directory; absent on legacy BIOS hosts.
    type: path
    default: /sys/firmware/efi
author: gpuserve team
"""

EXAMPLES = r"""
- name: Find NVIDIA GPUs
  gpuserve.vllm.host_gpu_facts:
"""

RETURN = r"""
ansible_facts:
  description:
    - C(gpuserve_gpus), a list of dicts (pci_address, device_id, name, compute_capability,
      name_source).
    - C(gpuserve_secure_boot), one of enabled, disabled, not-uefi, unknown.
  returned: always
  type: dict
"""

import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuserve.vllm.plugins.module_utils.secure_boot import secure_boot_state

NVIDIA_VENDOR = "0x10de"
# PCI class 0x03xxxx is a display controller (VGA 0x0300, 3D 0x0302); the GPU's
# HDMI audio function (0x0403) shares the vendor ID and must not be counted.
DISPLAY_CLASS_PREFIX = "0x03"

# Device ID -> (marketing name, compute capability). Only what the project targets or
# meets on validation hosts; everything else is reported as unknown, never guessed.
KNOWN_GPUS: dict[str, tuple[str, str]] = {
    "0x2b85": ("NVIDIA GeForce RTX 5090", "12.0"),
    "0x2b87": ("NVIDIA GeForce RTX 5090 D", "12.0"),
    "0x2c02": ("NVIDIA GeForce RTX 5080", "12.0"),
    "0x2bb1": ("NVIDIA RTX PRO 6000 Blackwell", "12.0"),
    "0x2330": ("NVIDIA H100 80GB HBM3", "9.0"),
    "0x2331": ("NVIDIA H100 PCIe", "9.0"),
    "0x2321": ("NVIDIA H100 NVL", "9.0"),
    "0x2335": ("NVIDIA H200", "9.0"),
    "0x233b": ("NVIDIA H200 NVL", "9.0"),
    "0x2684": ("NVIDIA GeForce RTX 4090", "8.9"),
    "0x26b9": ("NVIDIA L40S", "8.9"),
    "0x27b8": ("NVIDIA L4", "8.9"),
    "0x20b0": ("NVIDIA A100-SXM4-40GB", "8.0"),
    "0x20b2": ("NVIDIA A100-SXM4-80GB", "8.0"),
    "0x20b5": ("NVIDIA A100 80GB PCIe", "8.0"),
    "0x20f1": ("NVIDIA A100-PCIE-40GB", "8.0"),
}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip().lower()
    except OSError:
        return ""


def _proc_model(nvidia_proc: Path, pci_address: str) -> str:
    """The driver's own name for the GPU at this address, when a driver is loaded."""
    info = nvidia_proc / pci_address / "information"
    try:
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                return value.strip()
    except OSError:
        pass
    return ""


def find_gpus(pci_devices: Path, nvidia_proc: Path) -> list[dict[str, str | None]]:
    gpus: list[dict[str, str | None]] = []
    if not pci_devices.is_dir():
        return gpus
    for device in sorted(pci_devices.iterdir()):
        if _read(device / "vendor") != NVIDIA_VENDOR:
            continue
        if not _read(device / "class").startswith(DISPLAY_CLASS_PREFIX):
            continue
        device_id = _read(device / "device")
        known_name, capability = KNOWN_GPUS.get(device_id, (None, None))
        proc_name = _proc_model(nvidia_proc, device.name)
        gpus.append(
            {
                "pci_address": device.name,
                "device_id": device_id,
                "name": proc_name or known_name or f"unknown NVIDIA GPU (device {device_id})",
                "compute_capability": capability,
                "name_source": "driver" if proc_name else ("id table" if known_name else "unknown"),
            }
        )
    return gpus


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "pci_devices_path": {"type": "path", "default": "/sys/bus/pci/devices"},
            "nvidia_proc_path": {"type": "path", "default": "/proc/driver/nvidia/gpus"},
            "efi_path": {"type": "path", "default": "/sys/firmware/efi"},
        },
        supports_check_mode=True,
    )
    params = module.params
    gpus = find_gpus(Path(params["pci_devices_path"]), Path(params["nvidia_proc_path"]))
    module.exit_json(
        changed=False,
        ansible_facts={
            "gpuserve_gpus": gpus,
            "gpuserve_secure_boot": secure_boot_state(Path(params["efi_path"])),
            "gpuserve_nvidia_driver_loaded": os.path.isdir(params["nvidia_proc_path"]),
        },
    )


if __name__ == "__main__":
    main()
