"""The compose_runtime role's preflight, inputs and configure phases on this machine, run by
ansible-playbook (tests/playbooks/files/compose_runtime.yml).

`docker` is a wrapper whose only command is `compose`, handed to a REAL compose v2 binary
(`docker compose`'s plugin, or tests/fixtures/compose_v2/fetch.sh's Debian 13 build): the
version check and the `config --quiet` validation run for real. No Docker daemon is used: the
up and verify phases are skipped (--skip-tags), so nothing is started; they need the Molecule
scenario of the next slice. Every path the role writes is under tmp_path (this machine's /etc
is not touched); the simulator engine skips the NVIDIA hook check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from playbook_run import PlaybookRun

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = "tests/playbooks/files/compose_runtime.yml"
SKIP = "compose_runtime_up,compose_runtime_verify"
WRITE = (
    "Write docker-compose.yml (checked with docker compose config before it replaces the old one)"
)


def _setup(tmp_path: Path, compose_v2: list[str]) -> dict[str, Any]:
    wrapper = tmp_path / "bin" / "docker"
    wrapper.parent.mkdir()
    binary = " ".join(compose_v2)
    wrapper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = compose ] || { echo "test wrapper: only docker compose" >&2; exit 64; }\n'
        f'shift; exec {binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    (gateway / "gateway.yml").write_text("listen: {host: 127.0.0.1, port: 8080}\n")
    return {
        "compose_runtime_docker": str(wrapper),
        "compose_runtime_engine": "simulator",
        "compose_runtime_engine_image": "gpuserve/engine-simulator:test",
        "compose_runtime_gateway_image": "gpuserve/gateway:test",
        "compose_runtime_nginx_enabled": False,
        "compose_runtime_project_dir": str(tmp_path / "project"),
        "compose_runtime_state_dir": str(tmp_path / "state"),
        "compose_runtime_tmpfiles_path": str(tmp_path / "tmpfiles.conf"),
        "compose_runtime_gateway_config_dir": str(gateway),
        "compose_runtime_images_record": str(tmp_path / "no-record.json"),
        "vllm_service_run_dir": str(tmp_path / "run"),
        "vllm_service_models_dir": str(tmp_path / "models"),
        "vllm_service_models": [
            {
                "name": "tiny",
                "source": {"type": "local", "path": str(tmp_path / "m")},
                "revision": "v1",
            }
        ],
    }


def _changed(run: PlaybookRun) -> list[str]:
    return [
        e["event_data"]["task"]
        for e in run.events
        if e.get("event") == "runner_on_ok" and e["event_data"]["res"].get("changed")
    ]


def test_the_file_is_written_validated_and_a_second_run_changes_nothing(
    run_playbook: Any, tmp_path: Path, compose_v2: list[str]
) -> None:
    extra = _setup(tmp_path, compose_v2)
    first = run_playbook(PLAYBOOK, extra, skip_tags=SKIP)
    assert first.status == "successful", first.stdout[-3000:]
    assert WRITE in _changed(first)
    project = yaml.safe_load((tmp_path / "project" / "docker-compose.yml").read_text())
    assert list(project["services"]) == ["vllm-tiny", "gateway"]
    assert (tmp_path / "run").is_dir()  # systemd-tmpfiles made it from the entry
    assert (tmp_path / "run").stat().st_uid == 10001
    second = run_playbook(PLAYBOOK, extra, skip_tags=SKIP)
    assert second.status == "successful", second.stdout[-3000:]
    assert _changed(second) == []


def test_a_file_compose_rejects_never_replaces_the_live_one(
    run_playbook: Any, tmp_path: Path, compose_v2: list[str]
) -> None:
    extra = _setup(tmp_path, compose_v2)
    assert run_playbook(PLAYBOOK, extra, skip_tags=SKIP).status == "successful"
    live = tmp_path / "project" / "docker-compose.yml"
    before = live.read_text()
    broken = extra | {
        "compose_runtime_model_limits": {"mem_limit": "4g", "cpus": 0, "shm_size": "lots"}
    }
    run = run_playbook(PLAYBOOK, broken, skip_tags=SKIP)
    assert run.status == "failed"
    (message,) = run.failure_messages()
    assert "failed to validate" in message
    assert live.read_text() == before
    assert "shm_size" in run.stdout  # compose's own reason reaches the play's output


def test_check_mode_writes_nothing(
    run_playbook: Any, tmp_path: Path, compose_v2: list[str]
) -> None:
    extra = _setup(tmp_path, compose_v2)
    run = run_playbook(PLAYBOOK, extra, skip_tags="compose_runtime_verify", check=True)
    assert run.status == "successful", run.stdout[-3000:]
    assert not (tmp_path / "project").exists()
    (said,) = run.task_results("Say why check mode does not start the project")
    assert "would change" in said["msg"]


def test_the_images_come_from_container_images_record(
    run_playbook: Any, tmp_path: Path, compose_v2: list[str]
) -> None:
    extra = _setup(tmp_path, compose_v2)
    del extra["compose_runtime_engine_image"], extra["compose_runtime_gateway_image"]
    record = tmp_path / "images.json"
    record.write_text(
        '{"schema": 1, "images": {"simulator": {"ref": "gpuserve/engine-simulator:k1"},'
        ' "vllm": {"ref": "gpuserve/vllm:k0"}, "gateway": {"ref": "gpuserve/gateway:k2"}}}'
    )
    run = run_playbook(
        PLAYBOOK, extra | {"compose_runtime_images_record": str(record)}, skip_tags=SKIP
    )
    assert run.status == "successful", run.stdout[-3000:]
    services = yaml.safe_load((tmp_path / "project" / "docker-compose.yml").read_text())["services"]
    assert services["vllm-tiny"]["image"] == "gpuserve/engine-simulator:k1"
    assert services["gateway"]["image"] == "gpuserve/gateway:k2"
    missing = run_playbook(PLAYBOOK, extra, skip_tags=SKIP)  # no record, no variables
    assert missing.status == "failed"
    (message,) = missing.failure_messages()
    assert "No engine (simulator), gateway image" in message
    assert "compose_runtime_engine_image, compose_runtime_gateway_image" in message
    assert "not found" in message
