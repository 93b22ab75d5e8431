"""The systemd hardening every gpuserve service shares, in one place.

Each unit template renders its hardening section as
`{{ {directive: value, ...} | gpuserve.vllm.systemd_hardening }}`: the shared directives
below, with that unit's deliberate differences (the mapping, commented in the template)
applied. A unit can only differ where its template says so, so the units cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

DOCUMENTATION = """
name: systemd_hardening
short_description: The hardening directives shared by gpuserve's systemd units
description:
  - Returns the shared [Service] hardening lines, one directive per line, with the given
    per-unit differences applied. A string replaces the shared value in place, a list gives
    one line per item (DeviceAllow=, SystemCallFilter=), null leaves the directive out, and a
    directive the shared set lacks is appended in the order given.
positional: _input
options:
  _input:
    description: This unit's differences, directive name to value (may be empty).
    type: dict
    required: true
"""

Value = str | Sequence[str] | None

# The shared directives, in the order they are written. `systemd-analyze security <unit>`
# scores them; docs/serving.md ("Hardening") explains each unit's differences.
SHARED: tuple[tuple[str, str], ...] = (
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("DevicePolicy", "closed"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("KeyringMode", "private"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
    ("IPAddressDeny", "any"),
    ("IPAddressAllow", "localhost"),
)

_DIRECTIVE = re.compile(r"[A-Z][A-Za-z]+")


def _lines(name: str, value: Value) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    for item in values:
        if not isinstance(item, str) or "\n" in item:
            raise ValueError(
                f"systemd_hardening: {name} must be one line or a list of lines, got {item!r}"
            )
    return [f"{name}={item}" for item in values]


def systemd_hardening(differences: Mapping[str, Value] | None) -> str:
    """The shared hardening lines with one unit's differences applied (see DOCUMENTATION)."""
    differences = dict(differences or {})
    bad = sorted(k for k in differences if not isinstance(k, str) or not _DIRECTIVE.fullmatch(k))
    if bad:
        names = ", ".join(map(repr, bad))
        raise ValueError(f"systemd_hardening: not a systemd directive name: {names}")
    lines: list[str] = []
    for name, shared in SHARED:
        lines += _lines(name, differences.pop(name, shared))
    for name, value in differences.items():
        lines += _lines(name, value)
    return "\n".join(lines)


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"systemd_hardening": systemd_hardening}
