#!/usr/bin/python3
"""Load the NVIDIA kernel modules CUDA needs and create their device nodes (installed by the
vllm_service role as nvidia-devices, run by gpuserve-nvidia-devices.service before vllm@).

vllm@ units run with DevicePolicy=closed and DeviceAllow=char-<name>: systemd resolves each
name in /proc/devices when the unit starts, so a module that is not loaded then (nvidia-uvm
loads on first CUDA use, through the setuid nvidia-modprobe that NoNewPrivileges forbids)
stays denied. This runs first, as root, and does what nvidia-modprobe does:
  modprobe nvidia, nvidia-uvm (required) and nvidia-modeset (when the driver ships it);
  /dev/nvidiactl (195:255), /dev/nvidia<minor> per GPU (minor from
  /proc/driver/nvidia/gpus/*/information), /dev/nvidia-modeset (195:254),
  /dev/nvidia-uvm and /dev/nvidia-uvm-tools (nvidia-uvm's dynamic major, minors 0 and 1).
Usage: nvidia-devices [ROOT]  (ROOT prefixes /proc and /dev; tests plan against a fake tree).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

# Majors and minors as the open kernel modules register them (kernel-open/common/inc/
# nv-chardev-numbers.h: major 195, modeset 254, control 255; nvidia-uvm: dynamic major).
NVIDIA_MAJOR = 195
CONTROL_MINOR = 255
MODESET_MINOR = 254
REQUIRED_MODULES = ("nvidia", "nvidia-uvm")
OPTIONAL_MODULES = ("nvidia-modeset",)
NODE_MODE = 0o666  # the driver's default (NVreg_DeviceFileMode); the unit's allowlist gates access


class Node(NamedTuple):
    path: str
    major: int
    minor: int


def char_majors(proc_devices: str) -> dict[str, int]:
    """Name -> major of the character devices in /proc/devices."""
    majors: dict[str, int] = {}
    in_chars = False
    for line in proc_devices.splitlines():
        if line.startswith("Character devices:"):
            in_chars = True
        elif line.startswith("Block devices:"):
            in_chars = False
        elif in_chars and len(parts := line.split()) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def gpu_minors(gpus_dir: Path) -> list[int]:
    """Device minors of the GPUs the driver manages ("Device Minor:" in each information file)."""
    minors = []
    for info in sorted(gpus_dir.glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Device Minor" and value.strip().isdigit():
                minors.append(int(value.strip()))
    return sorted(minors)


def plan(root: Path) -> list[Node]:
    """The device nodes the loaded modules need, from /proc (after the modules are loaded)."""
    majors = char_majors((root / "proc/devices").read_text())
    missing = [m for m in REQUIRED_MODULES if m not in majors]
    if missing:
        raise RuntimeError(f"not registered in /proc/devices after modprobe: {', '.join(missing)}")
    dev = str(root / "dev")
    nodes = [Node(f"{dev}/nvidiactl", NVIDIA_MAJOR, CONTROL_MINOR)]
    minors = gpu_minors(root / "proc/driver/nvidia/gpus")
    nodes += [Node(f"{dev}/nvidia{m}", NVIDIA_MAJOR, m) for m in minors]
    if "nvidia-modeset" in majors:
        nodes.append(Node(f"{dev}/nvidia-modeset", NVIDIA_MAJOR, MODESET_MINOR))
    uvm = majors["nvidia-uvm"]
    nodes += [Node(f"{dev}/nvidia-uvm", uvm, 0), Node(f"{dev}/nvidia-uvm-tools", uvm, 1)]
    return nodes


def ensure(node: Node) -> str:
    """Create the node, or replace one with the wrong type or numbers; say what was done."""
    want = os.makedev(node.major, node.minor)
    try:
        st = os.stat(node.path)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == want:
            return f"ok      {node.path} ({node.major}:{node.minor})"
        os.unlink(node.path)
    except FileNotFoundError:
        pass
    os.mknod(node.path, stat.S_IFCHR | NODE_MODE, want)
    os.chmod(node.path, NODE_MODE)  # mknod applies the umask
    return f"created {node.path} ({node.major}:{node.minor})"


def loaded(name: str, sys_module: Path) -> bool:
    """A module already in the kernel (/sys/module/<name with underscores>)."""
    return (sys_module / name.replace("-", "_")).is_dir()


def load_modules(sys_module: Path = Path("/sys/module")) -> None:
    # Loaded modules are skipped: modprobe of a loaded module still needs the module files in
    # /lib/modules/<kernel>, which a container or namespace machine sharing the host's loaded
    # driver does not have (tests/gpu/machine).
    for name in REQUIRED_MODULES:
        if not loaded(name, sys_module):
            subprocess.run(["modprobe", name], check=True)
    for name in OPTIONAL_MODULES:
        if not loaded(name, sys_module):
            subprocess.run(["modprobe", "-q", name], check=False)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path("/")
    try:
        if root == Path("/"):
            load_modules()
        nodes = plan(root)
        for node in nodes:
            print(ensure(node))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"nvidia-devices: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
