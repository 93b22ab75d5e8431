"""The UEFI Secure Boot state, read from efivarfs: the one definition in the collection.

Every module that reports Secure Boot imports SECURE_BOOT_VARIABLE and secure_boot_state
from here, so the variable's name cannot drift between them again.
"""

from __future__ import annotations

from pathlib import Path

# EFI_GLOBAL_VARIABLE: the vendor GUID of the variables the UEFI specification defines
# (SecureBoot, SetupMode, PK, KEK, ...). See tests/unit/test_secure_boot.py for the source.
EFI_GLOBAL_VARIABLE_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# efivarfs names a variable "<Name>-<vendor GUID in lower case>".
SECURE_BOOT_VARIABLE = f"SecureBoot-{EFI_GLOBAL_VARIABLE_GUID}"

STATES = ("enabled", "disabled", "not-uefi", "unknown")


def secure_boot_state(efi_dir: Path) -> str:
    """enabled, disabled, not-uefi (no firmware directory: legacy BIOS) or unknown.

    efi_dir is the firmware directory (/sys/firmware/efi). An efivarfs file holds 4 bytes of
    attributes, then the value; SecureBoot's value is one byte, 1 when enabled.
    """
    if not efi_dir.is_dir():
        return "not-uefi"
    try:
        data = (efi_dir / "efivars" / SECURE_BOOT_VARIABLE).read_bytes()
    except OSError:
        return "unknown"
    if len(data) < 5:
        return "unknown"
    return "enabled" if data[4] == 1 else "disabled"
