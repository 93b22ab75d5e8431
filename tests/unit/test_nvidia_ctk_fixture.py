"""The nvidia_repo fixture's nvidia-ctk stand-in edits daemon.json the way nvidia-ctk 1.17.8 does.

The gpu_stack scenario's daemon.json assertions are only as good as this stand-in, so it is
checked here against the real tool's behaviour (NVIDIA/nvidia-container-toolkit,
pkg/config/engine/docker: AddRuntime + Save with json.MarshalIndent and four spaces).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CTK = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_repo" / "nvidia_ctk.py"
NVIDIA = {"args": [], "path": "nvidia-container-runtime"}


def ctk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CTK), *args], capture_output=True, text=True, check=False
    )


def test_configure_creates_daemon_json_and_its_folder(tmp_path):
    config = tmp_path / "docker" / "daemon.json"
    run = ctk("runtime", "configure", "--runtime=docker", f"--config={config}")
    assert run.returncode == 0, run.stderr
    assert json.loads(config.read_text()) == {"runtimes": {"nvidia": NVIDIA}}
    assert f"Wrote updated config to {config}" in run.stderr


def test_configure_merges_into_existing_settings_and_runtimes(tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text(
        '{"runtimes": {"runsc": {"path": "/usr/local/bin/runsc"}}, "log-driver": "journald"}'
    )
    assert ctk("runtime", "configure", "--runtime=docker", "--config", str(config)).returncode == 0
    assert json.loads(config.read_text()) == {
        "log-driver": "journald",
        "runtimes": {"nvidia": NVIDIA, "runsc": {"path": "/usr/local/bin/runsc"}},
    }


def test_output_is_go_marshalindent_four_spaces_sorted_without_final_newline(tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text('{"b": 1, "a": 2}')
    ctk("runtime", "configure", "--runtime=docker", f"--config={config}")
    assert config.read_text() == (
        '{\n    "a": 2,\n    "b": 1,\n    "runtimes": {\n        "nvidia": {\n'
        '            "args": [],\n            "path": "nvidia-container-runtime"\n'
        "        }\n    }\n}"
    )


def test_invalid_json_fails_and_leaves_the_file(tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text("{not json")
    run = ctk("runtime", "configure", "--runtime=docker", f"--config={config}")
    assert run.returncode == 1
    assert config.read_text() == "{not json"


def test_cdi_generate_fails_like_the_real_tool_without_a_driver(tmp_path):
    run = ctk("cdi", "generate", f"--output={tmp_path / 'nvidia.yaml'}")
    assert run.returncode == 1
    assert "failed to initialize NVML" in run.stderr
    assert not (tmp_path / "nvidia.yaml").exists()
