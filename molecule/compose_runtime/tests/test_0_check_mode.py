"""Check mode on the converged compose_runtime scenario reports no change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("check_mode", ROOT / "molecule/shared/check_mode.py")
assert _spec
assert _spec.loader
check_mode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_mode)


def test_check_mode_on_the_converged_host_changes_nothing(request) -> None:
    recap, out = check_mode.check_mode_changes(
        request.config.option.ansible_inventory, ROOT / "playbooks/serve.yml"
    )
    assert recap == dict.fromkeys(recap, 0), check_mode.changed_tasks(out)
    assert len(recap) == 1
