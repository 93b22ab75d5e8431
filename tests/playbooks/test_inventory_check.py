"""Bad operator input stops site.yml and every stage playbook before any host changes
(issue 18): playbooks/validate_inventory.yml runs first, and its one failure lists one line
per problem, naming the variable's path, what is wrong and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
from playbook_run import PlaybookRun

CHECK_PLAY = "Check the inventory of every stage before any host changes"
MODEL = {"name": "tiny", "source": {"type": "local", "path": "/srv/tiny"}}


def _assert_stopped_before_any_change(run: PlaybookRun) -> str:
    assert run.status == "failed", run.stdout[-2000:]
    (msg,) = run.failure_messages()
    plays = {
        e["event_data"].get("play")
        for e in run.events
        if e.get("event", "").startswith("runner_on_")
    }
    assert plays == {CHECK_PLAY}, f"tasks of other plays ran: {plays}"
    assert not [e for e in run.events if e.get("event_data", {}).get("res", {}).get("changed")]
    assert "Traceback" not in run.stdout
    assert "argument_spec" not in msg
    assert "Supported parameters" not in msg
    return msg


def test_site_refuses_a_misspelt_model_key_naming_the_real_one(run_playbook) -> None:
    models = [MODEL, MODEL | {"name": "other", "max_model_lenn": 4096}]
    msg = _assert_stopped_before_any_change(
        run_playbook("site.yml", {"vllm_service_models": models})
    )
    assert msg.startswith("1 inventory value(s) refused for localhost before any change:")
    assert (
        "- vllm_service_models[1].max_model_lenn: unknown key; did you mean max_model_len?" in msg
    )


def test_every_problem_of_every_stage_is_one_line(run_playbook) -> None:
    extravars: dict[str, Any] = {
        "gateway_limits": {"max_in_flight": -1},
        "nginx_proxy_https_port": 70000,
        "nginx_proxy_tls_mode": "self-signed",
        "gateway_workers": 0,
        "preflight_min_gpus": "two",
        "vllm_build_max_jobs": "many",
    }
    msg = _assert_stopped_before_any_change(run_playbook("site.yml", extravars))
    lines = msg.splitlines()[1:]
    assert lines == [
        '- preflight_min_gpus: is "two"; must be an integer',
        '- vllm_build_max_jobs: is "many"; must be an integer',
        "- gateway_workers: is 0; allowed: 1..64 (uvicorn workers)",
        "- gateway_limits.max_in_flight: is -1; allowed: >= 0 (requests, 0 = no cap)",
        "- nginx_proxy_https_port: is 70000; allowed: 1..65535 (a TCP port)",
        '- nginx_proxy_tls_mode: is "self-signed"; allowed: provided, selfsigned'
        " (did you mean selfsigned?)",
    ]


@pytest.mark.parametrize(
    "playbook",
    ["preflight", "gpu_stack", "vllm_build", "serve", "monitoring"],
)
def test_each_stage_playbook_checks_first(run_playbook, playbook: str) -> None:
    bad = {"gateway_limits": {"max_tokens": 10, "max_inflight": 3}}
    msg = _assert_stopped_before_any_change(run_playbook(f"playbooks/{playbook}.yml", bad))
    assert "- gateway_limits.max_inflight: unknown key; did you mean max_in_flight?" in msg


def test_a_secret_in_a_wrong_place_is_not_shown(run_playbook) -> None:
    keys = [{"name": "ci", "key": {"oops": "s3cr3t-value-0123456789"}}]
    run = run_playbook("site.yml", {"gateway_api_keys": keys})
    msg = _assert_stopped_before_any_change(run)
    assert "gateway_api_keys[0].key: is (hidden); must be a string" in msg
    assert "s3cr3t" not in run.stdout
