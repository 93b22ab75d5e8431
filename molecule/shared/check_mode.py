"""`ansible-playbook --check` of a scenario's converge on its converged hosts: what would change.

Molecule's own `check` step runs the same command but asserts nothing, so the scenarios that
use this replace that step with a test that fails on any change (issue 18: the NVML
exporter's pip task and its handler reported changed=2 on a converged host).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def check_mode_changes(
    inventory: str, playbook: Path, extra_args: list[str] | None = None
) -> tuple[dict[str, int], str]:
    """(host -> changed count, the run's output); the run itself must succeed."""
    run = subprocess.run(
        ["ansible-playbook", "-i", inventory, "--check", *(extra_args or []), str(playbook)],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
        check=False,
        timeout=900,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    recap = {h: int(c) for h, c, _u, _f in _RECAP.findall(out)}
    assert recap, out[-4000:]
    return recap, out


def assert_no_change(
    inventory: str, playbook: Path, hosts: int, extra_args: list[str] | None = None
) -> str:
    """The --check run on exactly `hosts` hosts changed nothing on any; its output."""
    recap, out = check_mode_changes(inventory, playbook, extra_args)
    assert recap == dict.fromkeys(recap, 0), changed_tasks(out)
    assert len(recap) == hosts, recap
    return out


def changed_tasks(out: str) -> list[str]:
    """The tasks that reported a change (`changed: [host]` lines under their TASK header)."""
    found, task = [], ""
    for line in out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            found.append(f"{task}: {line}")
    return found
