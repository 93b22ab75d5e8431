"""Run the project's playbooks against this machine through ansible-runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
from playbook_run import PlaybookRun

ROOT = Path(__file__).resolve().parents[2]


def _venv_path() -> str:
    """PATH with this interpreter's bin first: ansible-runner finds the venv's ansible-playbook."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.fixture
def run_playbook(tmp_path: Path) -> Callable[..., PlaybookRun]:
    def run(
        playbook: str,
        extravars: dict[str, Any] | None = None,
        tags: str = "",
        skip_tags: str = "",
        path_first: str = "",
        check: bool = False,
    ) -> PlaybookRun:
        (tmp_path / "runner").mkdir(exist_ok=True)
        runner = ansible_runner.run(
            private_data_dir=str(tmp_path / "runner"),
            project_dir=str(ROOT),
            playbook=str(ROOT / playbook),
            inventory=str(ROOT / "inventories" / "local" / "hosts.yml"),
            extravars=extravars or {},
            tags=tags or None,
            skip_tags=skip_tags or None,
            envvars={
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "PATH": os.pathsep.join([p for p in (path_first, _venv_path()) if p]),
            },
            cmdline="--check" if check else None,
            quiet=True,
        )
        return PlaybookRun(runner)

    return run


@pytest.fixture
def gpu_sysfs() -> Path:
    """The fixture sysfs tree of a host with two RTX 5090s (tests/fixtures/sysfs)."""
    return ROOT / "tests" / "fixtures" / "sysfs"
