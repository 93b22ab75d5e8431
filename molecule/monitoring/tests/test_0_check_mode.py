"""Check mode on the converged monitoring scenario reports no change (issue 18)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "molecule/shared"))
import check_mode  # noqa: E402  (molecule/shared is not a package)


def test_check_mode_on_the_converged_hosts_changes_nothing(request) -> None:
    check_mode.assert_no_change(
        request.config.option.ansible_inventory, ROOT / "molecule/monitoring/converge.yml", 2
    )
