"""Check mode on the converged compose_runtime scenario reports no change."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "molecule/shared"))
import check_mode  # noqa: E402  (molecule/shared is not a package)


def test_check_mode_on_the_converged_host_changes_nothing(request) -> None:
    check_mode.assert_no_change(
        request.config.option.ansible_inventory, ROOT / "molecule/compose_runtime/converge.yml", 1
    )
