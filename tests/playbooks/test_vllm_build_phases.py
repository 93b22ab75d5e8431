"""vllm_build's phases can be skipped by tag: a run without the install phase (an image that has the
packages, an operator's rerun) still knows whether the venv exists, and a real run whose venv is
missing stops with one message naming the skipped phase (it used to fail on an undefined variable,
seen on the GPU validation host's air-gapped build, docs/vllm-build.md)."""

from __future__ import annotations

from pathlib import Path


def test_skipping_install_without_a_venv_names_the_phase(run_playbook, tmp_path: Path) -> None:
    venv = tmp_path / "no-venv"
    run = run_playbook(
        "tests/playbooks/files/vllm_build_role.yml",
        extravars={"vllm_build_venv": str(venv), "vllm_build_work_dir": str(tmp_path / "work")},
        skip_tags="vllm_build_install",
    )
    assert run.status == "failed", run.stdout[-2000:]
    messages = run.failure_messages()
    assert len(messages) == 1, messages
    assert f"{venv} does not exist" in messages[0]
    assert "--skip-tags vllm_build_install" in messages[0]
    assert "undefined" not in run.stdout
    assert not venv.exists()
