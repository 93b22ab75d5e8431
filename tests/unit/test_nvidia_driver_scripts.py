"""Unit tests of the nvidia_driver role's helpers: its facts module and files/*.py."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from ansible_collections.gpuserve.vllm.plugins.module_utils.secure_boot import SECURE_BOOT_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "roles" / "common" / "files"

# A throwaway ed25519 public key (the nvidia_repo fixture's) and its fingerprint per gpg.
KEY_B64 = (
    "mDMEawkMyRYJKwYBBAHaRw8BAQdAluaCuZsyLWP2QxmtYcUBJ4/07HT01mGBrzueT+5c8eu0SGdwdXNlcnZlIHRlc3Qg"
    "Zml4dHVyZSAoVEhST1dBV0FZLCB0ZXN0cyBvbmx5KSA8Zml4dHVyZUBncHVzZXJ2ZS5pbnZhbGlkPoiQBBMWCAA4FiEE"
    "g1nF511eS5dl0xNdb9byByKwhkwFAmsJDMkCGwMFCwkIBwIGFQoJCAsCBBYCAwECHgECF4AACgkQb9byByKwhkxPFQEA"
    "qrFhAee6TWZSNDhawC1w1DOavarx/t+6CCdYNZDhsZEBAKQZlx3UqGdQZDVBUaDwouF7uxUPXv6JFVWWpM6ZhJIK"
)
KEY_FPR = "8359C5E75D5E4B9765D3135D6FD6F20722B0864C"


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


facts = load("nvidia_driver_facts", ROOT / "plugins" / "modules" / "nvidia_driver_facts.py")
pgp = load("openpgp_fingerprints", FILES / "openpgp_fingerprints.py")


def make_tree(
    root: Path, *, gpus: int = 0, version: str = "", secure_boot: int | None = None
) -> None:
    for i in range(gpus):
        dev = root / f"sys/bus/pci/devices/0000:0{i}:00.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n")
        (dev / "device").write_text("0x2b85\n")
    audio = root / "sys/bus/pci/devices/0000:09:00.1"  # the GPU's HDMI audio: not a GPU
    audio.mkdir(parents=True)
    (audio / "vendor").write_text("0x10de\n")
    (audio / "class").write_text("0x040300\n")
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/modules").write_text("nvidia 1 0 - Live 0x0\nnouveau 2 0 - Live 0x0\n")
    if version:
        (root / "proc/driver/nvidia").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text(version)
    if secure_boot is not None:
        efi = root / "sys/firmware/efi/efivars"
        efi.mkdir(parents=True)
        (efi / SECURE_BOOT_VARIABLE).write_bytes(bytes([6, 0, 0, 0, secure_boot]))


OPEN_580 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build"
    "  (dvs-builder@U22-I3-AF03-09-1)  Thu Oct 30 2025\nGCC version:  gcc version 13.3.0\n"
)
PROPRIETARY_550 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.144.03  Mon Dec 30 2024\n"


def test_facts_count_only_nvidia_display_controllers(tmp_path):
    make_tree(tmp_path, gpus=2, version=OPEN_580)
    result = facts.gather(tmp_path / "sys", tmp_path / "proc")
    assert [g["address"] for g in result["gpus"]] == ["0000:00:00.0", "0000:01:00.0"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (OPEN_580, ("580.159.04", "open")),
        (PROPRIETARY_550, ("550.144.03", "proprietary")),
        ("", ("", "")),
    ],
)
def test_module_version_and_flavour_from_proc(text, expected):
    assert facts.parse_module_version(text) == expected


@pytest.mark.parametrize(("value", "state"), [(1, "enabled"), (0, "disabled"), (None, "not-uefi")])
def test_secure_boot_read_from_the_efi_variable_without_mokutil(tmp_path, value, state):
    make_tree(tmp_path, secure_boot=value)
    assert facts.gather(tmp_path / "sys", tmp_path / "proc")["secure_boot"] == state


def test_facts_in_a_container_without_driver(tmp_path):
    make_tree(tmp_path)
    result = facts.gather(tmp_path / "sys", tmp_path / "proc")
    assert result["module_loaded"] is False
    assert result["module_flavour"] == ""
    assert result["nouveau_loaded"] is True


def test_fingerprint_of_a_binary_key_matches_gpg():
    assert pgp.fingerprints(base64.b64decode(KEY_B64)) == [KEY_FPR]


def test_fingerprint_of_an_armored_key_matches_gpg():
    body = "\n".join(KEY_B64[i : i + 64] for i in range(0, len(KEY_B64), 64))
    begin, end = "-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----END PGP PUBLIC KEY BLOCK-----"
    armored = f"{begin}\n\n{body}\n=Jjoz\n{end}\n"
    assert pgp.fingerprints(armored.encode()) == [KEY_FPR]


def test_garbage_is_rejected():
    with pytest.raises(ValueError, match="not an OpenPGP packet"):
        pgp.fingerprints(b"\x01\x02\x03")


def test_fingerprint_script_reports_unreadable_files(tmp_path, capsys):
    assert pgp.main(["x", str(tmp_path / "missing.gpg")]) == 1
    assert "cannot read OpenPGP keys" in capsys.readouterr().err
