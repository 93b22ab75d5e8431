"""The collection's one definition of the SecureBoot EFI variable, against the UEFI specification.

Sources (read 2026-12-01):
- UEFI Specification 2.10, section 3.3 "Globally Defined Variables": the global variables,
  SecureBoot among them, use the vendor GUID EFI_GLOBAL_VARIABLE, published there as
      #define EFI_GLOBAL_VARIABLE \\
        {0x8BE4DF61,0x93CA,0x11d2,\\
          {0xAA,0x0D,0x00,0xE0,0x98,0x03,0x2B,0x8C}}
  i.e. 8BE4DF61-93CA-11D2-AA0D-00E098032B8C; SecureBoot (section 3.3, table 3.1) is a UINT8,
  1 when the platform boots in Secure Boot mode.
- Linux Documentation/filesystems/efivarfs.rst: efivarfs names each variable
  "<Name>-<vendor GUID>", e.g. SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c, and every
  file begins with the 4-byte attribute mask before the data.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ansible_collections.gpuserve.vllm.plugins.module_utils import secure_boot

ROOT = Path(__file__).resolve().parents[2]
# Spelled as the specification publishes it, not derived from the code's constant.
UEFI_SPEC_EFI_GLOBAL_VARIABLE = "8BE4DF61-93CA-11D2-AA0D-00E098032B8C"
LINUX_EFIVARFS_NAME = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# The C initializer's fields as printed in the specification, assembled into a GUID string.
SPEC_FIELDS = (0x8BE4DF61, 0x93CA, 0x11D2, (0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B, 0x8C))


def test_guid_is_the_uefi_efi_global_variable() -> None:
    assert uuid.UUID(secure_boot.EFI_GLOBAL_VARIABLE_GUID) == uuid.UUID(
        UEFI_SPEC_EFI_GLOBAL_VARIABLE
    )
    data1, data2, data3, data4 = SPEC_FIELDS
    spelled = (
        f"{data1:08x}-{data2:04x}-{data3:04x}-{bytes(data4[:2]).hex()}-{bytes(data4[2:]).hex()}"
    )
    assert spelled == UEFI_SPEC_EFI_GLOBAL_VARIABLE.lower()


def test_variable_name_is_the_one_efivarfs_shows() -> None:
    assert secure_boot.SECURE_BOOT_VARIABLE == LINUX_EFIVARFS_NAME


def test_fixture_efivar_is_named_as_real_firmware_names_it() -> None:
    efivars = ROOT / "tests" / "fixtures" / "sysfs" / "firmware" / "efi" / "efivars"
    assert sorted(p.name for p in efivars.iterdir()) == [LINUX_EFIVARFS_NAME]


def test_no_other_spelling_of_the_guid_in_the_collection() -> None:
    # One definition: every module reads it from module_utils/secure_boot.py.
    hits = [
        p.relative_to(ROOT).as_posix()
        for base in ("plugins", "roles")
        for p in (ROOT / base).rglob("*.py")
        if "93ca-11d2" in p.read_text(encoding="utf-8").lower()
    ]
    assert hits == ["plugins/module_utils/secure_boot.py"]


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (bytes([0x06, 0, 0, 0, 1]), "enabled"),  # attributes NV|BS|RT (0x6), value 1
        (bytes([0x06, 0, 0, 0, 0]), "disabled"),
        (bytes([0x06, 0, 0, 0]), "unknown"),  # attributes only
    ],
)
def test_state_from_the_efivarfs_file(tmp_path: Path, data: bytes, state: str) -> None:
    (tmp_path / "efivars").mkdir()
    (tmp_path / "efivars" / LINUX_EFIVARFS_NAME).write_bytes(data)
    assert secure_boot.secure_boot_state(tmp_path) == state


def test_a_variable_under_another_guid_is_not_read(tmp_path: Path) -> None:
    # The GUID host_gpu_facts used before (not EFI_GLOBAL_VARIABLE): real firmware has no such file.
    (tmp_path / "efivars").mkdir()
    (tmp_path / "efivars" / "SecureBoot-8be4df61-93ca-11d2-aa0d-e98032b8c39c").write_bytes(
        bytes([0x06, 0, 0, 0, 1])
    )
    assert secure_boot.secure_boot_state(tmp_path) == "unknown"
