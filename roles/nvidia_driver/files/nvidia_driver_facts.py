#!/usr/bin/env python3
"""Print read-only facts about the NVIDIA driver state of a host as JSON (run by the role).

Reads only kernel interfaces (no lspci, no mokutil, no nvidia-smi), so it works on minimal
hosts and inside containers: PCI devices from /sys/bus/pci/devices, the loaded module from
/proc/driver/nvidia/version and /proc/modules, Secure Boot from the SecureBoot EFI variable.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NVIDIA_VENDOR = "0x10de"
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
_VERSION_RE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def pci_gpus(root: Path) -> list[dict[str, str]]:
    """NVIDIA devices of PCI class 0x03 (display/3D), sorted by address."""
    gpus = []
    devices = root / "sys/bus/pci/devices"
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


def secure_boot_state(root: Path) -> str:
    """Byte 5 of the SecureBoot EFI variable (after 4 attribute bytes) is 1 when enabled."""
    var = root / "sys/firmware/efi/efivars" / SECURE_BOOT_VAR
    try:
        data = var.read_bytes()
    except OSError:
        return "unsupported"
    if len(data) < 5:
        return "unsupported"
    return "enabled" if data[4] == 1 else "disabled"


def module_loaded(root: Path, name: str) -> bool:
    return any(
        line.split(" ", 1)[0] == name for line in read_text(root / "proc/modules").splitlines()
    )


def gather(root: Path) -> dict[str, object]:
    version_text = read_text(root / "proc/driver/nvidia/version")
    version, flavour = parse_module_version(version_text)
    return {
        "gpus": pci_gpus(root),
        "module_loaded": bool(version_text),
        "module_version": version,
        "module_flavour": flavour,
        "nouveau_loaded": module_loaded(root, "nouveau"),
        "secure_boot": secure_boot_state(root),
    }


def main(argv: list[str]) -> int:
    """Usage: nvidia_driver_facts.py [ROOT]  (ROOT prefixes every path; tests use a fake tree)."""
    print(json.dumps(gather(Path(argv[1] if len(argv) > 1 else "/"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
