"""vllm_service's nvidia-devices helper: which nodes it creates, from a fake /proc (fixture)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HELPER = (
    Path(__file__).resolve().parents[2] / "roles" / "vllm_service" / "files" / "nvidia_devices.py"
)
spec = importlib.util.spec_from_file_location("nvidia_devices", HELPER)
assert spec is not None
assert spec.loader is not None
nd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nd)

# Fixture: /proc/devices laid out as on a 2-GPU host with driver 580 loaded (the names as an
# H200 host lists them, /work/shared/gpu/README.md; the dynamic majors are made up).
PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
195 nvidia
195 nvidiactl
195 nvidia-modeset
234 nvidia-uvm
235 nvidia-nvswitch
236 nvidia-nvlink
237 nvidia-caps
238 nvidia-caps-imex-channels

Block devices:
  8 sd
234 blkext
"""


def fake_proc(root: Path, devices: str, minors: list[int]) -> None:
    (root / "proc").mkdir()
    (root / "proc/devices").write_text(devices)
    for i, minor in enumerate(minors):
        gpu = root / f"proc/driver/nvidia/gpus/0000:0{i + 1}:00.0"
        gpu.mkdir(parents=True)
        (gpu / "information").write_text(
            f"Model: \t\t NVIDIA H200\nIRQ:   42\nDevice Minor: \t {minor}\n"
        )


def test_nodes_for_two_gpus_with_uvm_and_modeset(tmp_path: Path) -> None:
    fake_proc(tmp_path, PROC_DEVICES, [0, 1])
    dev = str(tmp_path / "dev")
    assert nd.plan(tmp_path) == [
        nd.Node(f"{dev}/nvidiactl", 195, 255),
        nd.Node(f"{dev}/nvidia0", 195, 0),
        nd.Node(f"{dev}/nvidia1", 195, 1),
        nd.Node(f"{dev}/nvidia-modeset", 195, 254),
        nd.Node(f"{dev}/nvidia-uvm", 234, 0),
        nd.Node(f"{dev}/nvidia-uvm-tools", 234, 1),
    ]


def test_block_device_majors_are_not_taken_for_char_devices() -> None:
    assert nd.char_majors(PROC_DEVICES)["nvidia-uvm"] == 234
    assert "blkext" not in nd.char_majors(PROC_DEVICES)


def test_missing_uvm_after_modprobe_is_an_error(tmp_path: Path) -> None:
    fake_proc(tmp_path, PROC_DEVICES.replace("234 nvidia-uvm\n", ""), [0])
    with pytest.raises(RuntimeError, match="nvidia-uvm"):
        nd.plan(tmp_path)


def test_main_reports_the_missing_module(tmp_path: Path, capsys) -> None:
    fake_proc(tmp_path, "Character devices:\n  1 mem\n", [])
    assert nd.main(["nvidia-devices", str(tmp_path)]) == 1
    assert "nvidia, nvidia-uvm" in capsys.readouterr().err


def test_loaded_modules_are_not_modprobed(tmp_path: Path, monkeypatch) -> None:
    # The GPU machine (tests/gpu/machine) shares the host's loaded driver and has no
    # /lib/modules: modprobe would fail there, so loaded modules are skipped.
    for name in ("nvidia", "nvidia_uvm"):
        (tmp_path / name).mkdir()
    calls: list[list[str]] = []
    monkeypatch.setattr(nd.subprocess, "run", lambda argv, check: calls.append(argv))
    nd.load_modules(tmp_path)
    assert calls == [["modprobe", "-q", "nvidia-modeset"]]
    (tmp_path / "nvidia_modeset").mkdir()
    calls.clear()
    nd.load_modules(tmp_path)
    assert calls == []
