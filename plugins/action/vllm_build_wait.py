"""Wait for a vLLM build started in the background and report its progress per host.

The role starts the build script with `async`/`poll: 0`; the script writes its pid,
appends everything to a log and writes its exit status to an rc file when it ends.
This action polls those three files over the host's connection, prints ninja's
`[n/m]` progress as a percentage and an ETA while the build runs, and on failure
returns the log's tail and the likely cause (OOM, torch mismatch, missing nvcc).
"""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime
from typing import Any

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.gpuserve.vllm.plugins.filter.vllm_build import (
    classify_failure,
    format_duration,
    parse_progress,
)

DOCUMENTATION = """
module: vllm_build_wait
short_description: Wait for a background vLLM build and report its progress
options:
  log: {description: Build log on the host, type: path, required: true}
  rc_file: {description: File the build script writes its exit code to, type: path, required: true}
  pid_file: {description: File the build script writes its pid to, type: path, required: true}
  timeout: {description: Seconds to wait at most, type: int, default: 10800}
  interval: {description: Seconds between polls, type: int, default: 15}
  tail_lines: {description: Log lines returned on failure, type: int, default: 40}
  start_grace: {description: Seconds the script may take to write its pid, type: int, default: 120}
"""

display = Display()

_MARK = "---vllm-build-log---"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ActionModule(ActionBase):
    """Poll the build's pid, rc and log files until it ends."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        ("log", "rc_file", "pid_file", "timeout", "interval", "tail_lines", "start_grace")
    )

    def _poll(self, log: str, rc_file: str, pid_file: str) -> tuple[str, str]:
        q = shlex.quote
        cmd = (
            f"if [ -f {q(rc_file)} ]; then echo rc=$(cat {q(rc_file)}); "
            f"elif [ ! -f {q(pid_file)} ]; then echo starting; "
            f"elif kill -0 $(cat {q(pid_file)}) 2>/dev/null; then echo running; "
            f"else echo gone; fi; echo {_MARK}; tail -c 65536 {q(log)} 2>/dev/null; true"
        )
        res = self._low_level_execute_command(f"/bin/sh -c {q(cmd)}", sudoable=True)
        out = res.get("stdout", "")
        state, _, tail = out.partition(_MARK + "\n")
        return state.strip(), tail

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        log, rc_file, pid_file = args["log"], args["rc_file"], args["pid_file"]
        timeout = int(args.get("timeout", 10800))
        interval = max(1, int(args.get("interval", 15)))
        tail_lines = int(args.get("tail_lines", 40))
        grace = int(args.get("start_grace", 120))
        host = (task_vars or {}).get("inventory_hostname", "?")

        started_at, t0 = _now(), time.monotonic()
        first: tuple[int, float] | None = None
        last_step: int | None = -1
        last_print = 0.0
        # A line when ninja's step moves, at most one per interval; else one a minute.
        quiet_s = max(60, interval)
        display.display(f"vllm_build [{host}]: build running; follow it with: tail -f {log}")
        while True:
            state, tail = self._poll(log, rc_file, pid_file)
            elapsed = time.monotonic() - t0
            if state.startswith("rc="):
                rc_text = state[3:].strip()
                rc = int(rc_text) if rc_text.lstrip("-").isdigit() else -1
                break
            if state == "gone" or (state == "starting" and elapsed > grace):
                rc = -9
                break
            if elapsed > timeout:
                rc = -14
                break
            prog = parse_progress(tail, 0)
            if prog["done"] is not None and first is None:
                first = (prog["done"], time.monotonic())
            if first is not None:
                prog = parse_progress(tail, time.monotonic() - first[1], started_step=first[0])
            if prog["done"] is not None:
                msg = (
                    f"vllm_build [{host}]: {prog['done']}/{prog['total']} ({prog['percent']}%), "
                    f"elapsed {format_duration(elapsed)}, ETA {format_duration(prog['eta_s'])}"
                )
            else:
                msg = (
                    f"vllm_build [{host}]: elapsed {format_duration(elapsed)}, no ninja step "
                    f"yet; last log line: {prog['line']}"
                )
            now = time.monotonic()
            if prog["done"] != last_step or now - last_print >= quiet_s:
                display.display(msg)
                last_step, last_print = prog["done"], now
            time.sleep(interval)

        elapsed = round(time.monotonic() - t0, 1)
        lines = tail.splitlines()[-tail_lines:]
        result.update(
            changed=False,
            rc=rc,
            started_at=started_at,
            finished_at=_now(),
            elapsed_s=elapsed,
            log=log,
        )
        if rc == 0:
            display.display(f"vllm_build [{host}]: build finished in {format_duration(elapsed)}")
            return result
        cause = classify_failure("\n".join(lines))
        if rc == -9 and cause["cause"] == "unknown":
            cause = {
                "cause": "killed",
                "hint": "the build died without an exit status (OOM killer? check "
                "`dmesg | grep -i oom`; lower vllm_build_max_jobs)",
            }
        why = {-9: "died without an exit status", -14: f"timed out after {timeout} s"}
        result.update(
            failed=True,
            log_tail=lines,
            cause=cause["cause"],
            hint=cause["hint"],
            msg=(
                f"vLLM build {why.get(rc, f'failed (exit {rc})')} after "
                f"{format_duration(elapsed)}. Likely cause: {cause['cause']}: {cause['hint']}. "
                f"Full log on the host: {log}. Last lines:\n" + "\n".join(lines)
            ),
        )
        return result
