"""An instance's command line has one definition (plugins/filter/vllm_service.py), shared by
the systemd drop-in (roles/vllm_service/templates/instance.conf.j2) and the compose runtime.

The drop-in, rendered through Ansible's own templating with the role's defaults, is compared
byte for byte with the FIXTURE drop-ins in tests/unit/data/vllm_service_dropins/: what the
Jinja-only template rendered before the command line moved into the filter (written once
from that template, as of commit b287da7), for entries that exercise systemd's
quoting (spaces, %, $, quotes, backslashes, ;), lists, booleans, numbers, both listen modes
and both engines. A deliberate change of the command line updates them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.gpuserve.vllm.plugins.filter.vllm_service import (
    vllm_service_instance_argv,
    vllm_service_instances,
)

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "vllm_service"
EXPECTED = Path(__file__).resolve().parent / "data" / "vllm_service_dropins"

HF = {"type": "hf", "repo_id": "microsoft/phi-2", "revision": "ef38" * 10}
ENTRIES: dict[str, dict[str, Any]] = {
    "defaults": {},  # the role's own default entry
    "quoting": {
        "name": "q1",
        "source": {"type": "local", "path": "/nfs/models/q 1"},
        "revision": "v1",
        "served_model_name": "my model",
        "extra_args": {
            "chat-template": "/etc/vllm/chat templates/phi 2.jinja",
            "override-generation-config": '{"temperature": 0.5}',
            "api-key": "pa$$word%with;semicolon",
            "download-dir": "C:\\odd\\path",
            "enforce-eager": "",
            "trust-remote-code": True,
            "disable-log-requests": False,
            "allowed-origins": ["http://a b", "http://c"],
            "max-num-seqs": 256,
            "swap-space": 4.5,
            "seed": None,
        },
        "env": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "ODD": "a b $HOME 100%", "Q": 'say "hi"'},
        "cuda_visible_devices": "0,1",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.85,
        "dtype": "bfloat16",
        "max_model_len": 8192,
    },
    "tcp": {
        "name": "tcp-model",
        "aliases": ["a/b"],
        "source": {"type": "archive", "url": "https://x/m.tar.gz", "sha256": "ab" * 32},
        "listen": "tcp",
        "port": 8100,
        "extra_args": {"dtype": "half", "port": 8101},  # extra_args override in place
        "sim_args": {"ttft-ms": 20, "itl-ms": 5, "fail-rate": 0.0, "quiet": True},
        "env": {"VLLM_HOST_IP": "10.0.0.5"},
    },
    "hf": {"name": "hf", "source": HF, "served_model_name": "phi", "switch": "recreate"},
}
COMMON = {
    "vllm_service_common_args": {"disable-log-stats": "", "uvicorn-log-level": "warning"},
    "vllm_service_sim_args": {"seed": 7, "tags": ["x y", "z"]},
    "vllm_service_env": {"VLLM_NO_USAGE_STATS": "1", "PCT": "50%"},
}


def _variables(engine: str, **overrides: Any) -> tuple[DataLoader, dict]:
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for path in (ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml"):
        variables.update(loader.load_from_file(str(path), trusted_as_template=True))
    variables.update(
        inventory_hostname="gpu1",
        ansible_managed="Ansible managed",
        vllm_service_engine=engine,
        **overrides,
    )
    return loader, variables


def _instances(engine: str, **overrides: Any) -> list[dict[str, Any]]:
    loader, variables = _variables(engine, **overrides)
    return Templar(loader=loader, variables=variables).template(
        trust_as_template("{{ _vllm_service_instances }}")
    )


def _dropin(engine: str, **overrides: Any) -> str:
    loader, variables = _variables(engine, **overrides)
    instance = Templar(loader=loader, variables=variables).template(
        trust_as_template("{{ _vllm_service_instances }}")
    )[0]
    templar = Templar(loader=loader, variables=variables | {"_vllm_service_instance": instance})
    # As the template action renders a file (ansible/plugins/action/template.py).
    template = (ROLE / "templates" / "instance.conf.j2").read_text()
    return templar.template(trust_as_template(template), escape_backslashes=False)


def _overrides(case: str, common: bool) -> dict[str, Any]:
    out: dict[str, Any] = dict(COMMON) if common else {}
    if ENTRIES[case]:
        out["vllm_service_models"] = [ENTRIES[case]]
    return out


@pytest.mark.parametrize("common", [False, True], ids=["role-defaults", "common-args"])
@pytest.mark.parametrize("engine", ["vllm", "simulator"])
@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_the_dropin_is_byte_identical_to_the_one_before_the_filter(
    case: str, engine: str, common: bool
) -> None:
    name = f"{case}-{engine}-{'common-args' if common else 'role-defaults'}.conf"
    after = _dropin(engine, **_overrides(case, common))
    assert "ExecStart=" in after
    assert after == (EXPECTED / name).read_text()


@pytest.mark.parametrize("engine", ["vllm", "simulator"])
def test_the_instances_equal_the_jinja_ones_before(engine: str) -> None:
    models = [e for e in ENTRIES.values() if e]
    after = _instances(engine, vllm_service_models=models)
    expected = json.loads((EXPECTED / f"instances-{engine}.json").read_text())
    assert json.loads(json.dumps([dict(i) for i in after], default=str)) == expected
    assert [i["store"] for i in after] == [
        "q1@v1",
        "tcp-model@" + "ab" * 6,
        "microsoft--phi-2@" + "ef38" * 10,
    ]


def test_the_quoting_case_reaches_systemd_escaped() -> None:
    dropin = _dropin("vllm", **_overrides("quoting", True))
    lines = [line.strip().removesuffix(" \\") for line in dropin.splitlines()]
    assert '"--api-key=pa$$$$word%%with;semicolon"' in lines
    assert '"--chat-template=/etc/vllm/chat templates/phi 2.jinja"' in lines
    assert '"--override-generation-config={\\"temperature\\": 0.5}"' in lines
    assert '"--download-dir=C:\\\\odd\\\\path"' in lines
    assert 'Environment="Q=say \\"hi\\""' in lines
    assert '"--allowed-origins=http://a b"' in lines
    assert "--allowed-origins=http://c" in lines
    assert "--trust-remote-code" in lines
    assert "--enforce-eager" in lines
    assert "--seed" in lines
    assert not any("disable-log-requests" in line for line in lines)
    assert 'Environment="ODD=a b $$HOME 100%%"' in lines
    assert "Environment=PCT=50%%" in lines


def _instance(entry: dict[str, Any], engine: str = "vllm") -> dict[str, Any]:
    (instance,) = vllm_service_instances(
        [entry], "/srv/models", "/run/vllm", "uds", "blue_green", engine, 900
    )
    return instance


def test_the_filter_returns_the_program_flags_and_environment() -> None:
    run = vllm_service_instance_argv(
        _instance(ENTRIES["quoting"]),
        "vllm",
        "/opt/gpuserve/venv",
        env={"VLLM_NO_USAGE_STATS": "1"},
        engine_env={"VLLM_HOST_IP": "127.0.0.1"},
    )
    assert run["program"] == [
        "/opt/gpuserve/venv/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    args = run["args"]
    assert args[:3] == [
        "--model=/srv/models/q1@v1",
        "--served-model-name=my model",
        "--dtype=bfloat16",
    ]
    assert "--uds=/run/vllm/q1.sock" in args
    assert "--max-num-seqs=256" in args
    assert "--swap-space=4.5" in args
    assert args.count("--allowed-origins=http://a b") == 1
    assert run["env"] == {
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
        "ODD": "a b $HOME 100%",
        "Q": 'say "hi"',
        "CUDA_VISIBLE_DEVICES": "0,1",
    }


def test_the_simulator_gets_no_engine_env_and_no_gpus() -> None:
    entry = ENTRIES["tcp"] | {"cuda_visible_devices": "1"}
    run = vllm_service_instance_argv(
        _instance(entry, "simulator"),
        "simulator",
        "/venv",
        engine_env={"VLLM_HOST_IP": "127.0.0.1"},
        host="127.0.0.2",
    )
    assert run["program"] == ["/venv/bin/gpuserve-sim"]
    assert run["args"][:4] == [
        "--model=tcp-model",
        "--host=127.0.0.2",
        "--port=8100",
        "--max-model-len=4096",
    ]
    assert "--quiet" in run["args"]
    assert "--ttft-ms=20" in run["args"]
    assert run["env"] == {"VLLM_HOST_IP": "10.0.0.5"}  # the entry's own env only


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="vllm or simulator"):
        vllm_service_instance_argv(_instance(ENTRIES["hf"]), "triton", "/v")
