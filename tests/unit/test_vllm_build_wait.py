"""The vllm_build_wait action: progress lines while a build runs, the cause when it fails.

Runs the real action through ansible-playbook on localhost against a fake build script
that writes ninja-style `[n/m]` steps, a pid file and an rc file like the role's script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = textwrap.dedent(
    """\
    - name: Wait for a fake build
      hosts: localhost
      connection: local
      gather_facts: false
      tasks:
        - name: Let the fake build start its steps
          ansible.builtin.file:
            path: "{{ d }}/go"
            state: touch
            mode: "0644"

        - name: Wait for the build
          gpuserve.vllm.vllm_build_wait:
            log: "{{ d }}/build.log"
            rc_file: "{{ d }}/build.rc"
            pid_file: "{{ d }}/build.pid"
            interval: 1
            timeout: 60
    """
)


def _fake_build(d: Path, steps: int, last_lines: str, rc: int) -> subprocess.Popen:
    script = d / "build.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            echo $$ > {d}/build.pid
            trap 'echo $? > {d}/build.rc' EXIT
            while [ ! -f {d}/go ]; do sleep 0.2; done
            for i in $(seq 1 {steps}); do echo "[$i/{steps}] Building k$i.o"; sleep 1; done
            printf '%s\\n' {last_lines!r}
            exit {rc}
            """
        )
    )
    with (d / "build.log").open("w") as log:
        return subprocess.Popen(["/bin/bash", str(script)], stdout=log, stderr=log)


def _play(d: Path) -> subprocess.CompletedProcess[str]:
    (d / "play.yml").write_text(PLAYBOOK)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [
            str(bindir / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"d={d} ansible_python_interpreter={sys.executable}",
            str(d / "play.yml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


pytestmark = pytest.mark.skipif(
    shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None,
    reason="ansible-playbook is not in this Python's venv",
)


def test_running_build_reports_percent_and_eta_then_succeeds(tmp_path: Path) -> None:
    proc = _fake_build(tmp_path, 5, "Successfully built vllm", 0)
    res = _play(tmp_path)
    proc.wait()
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert f"follow it with: tail -f {tmp_path}/build.log" in out
    assert "vllm_build [localhost]: 2/5 (40.0%)" in out or "3/5 (60.0%)" in out
    assert "ETA 0m0" in out
    assert "build finished in" in out


def test_failed_build_shows_log_tail_and_likely_oom(tmp_path: Path) -> None:
    tail = "c++: fatal error: Killed signal terminated program cc1plus"
    proc = _fake_build(tmp_path, 2, tail, 1)
    res = _play(tmp_path)
    proc.wait()
    out = res.stdout
    assert res.returncode != 0
    assert "failed (exit 1)" in out
    assert "Likely cause: oom" in out
    assert "cc1plus" in out
    assert f"Full log on the host: {tmp_path}/build.log" in out
