"""Run the project's playbooks against this machine through ansible-runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _venv_path() -> str:
    """PATH with this interpreter's bin first: ansible-runner finds the venv's ansible-playbook."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class PlaybookRun:
    def __init__(self, runner: Any) -> None:
        self.status: str = runner.status
        self.rc: int = runner.rc
        self.events: list[dict[str, Any]] = list(runner.events)
        self.stdout: str = runner.stdout.read()

    def failure_messages(self) -> list[str]:
        return [
            str(e["event_data"]["res"].get("msg", ""))
            for e in self.events
            if e.get("event") == "runner_on_failed"
        ]

    def task_results(self, task: str) -> list[dict[str, Any]]:
        return [
            e["event_data"]["res"]
            for e in self.events
            if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == task
        ]


@pytest.fixture
def run_playbook(tmp_path: Path) -> Callable[..., PlaybookRun]:
    def run(playbook: str, extravars: dict[str, Any] | None = None, tags: str = "") -> PlaybookRun:
        (tmp_path / "runner").mkdir(exist_ok=True)
        runner = ansible_runner.run(
            private_data_dir=str(tmp_path / "runner"),
            project_dir=str(ROOT),
            playbook=str(ROOT / playbook),
            inventory=str(ROOT / "inventories" / "local" / "hosts.yml"),
            extravars=extravars or {},
            tags=tags or None,
            envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": _venv_path()},
            quiet=True,
        )
        return PlaybookRun(runner)

    return run


@pytest.fixture
def gpu_sysfs() -> Path:
    """The fixture sysfs tree of a host with two RTX 5090s (tests/fixtures/sysfs)."""
    return ROOT / "tests" / "fixtures" / "sysfs"
