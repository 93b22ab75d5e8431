"""What one ansible-runner run of a playbook produced (status, events, stdout)."""

from __future__ import annotations

from typing import Any


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
