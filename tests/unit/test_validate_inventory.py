"""The validate_inventory action's checks (plugins/action/validate_inventory.py): one line per
problem naming the variable's path, what is wrong and what is allowed; and no false alarm
on any value this project itself writes down (defaults, Molecule, inventories, docs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.gpuserve.vllm.plugins.action.validate_inventory import (
    RANGES,
    check_host,
    load_specs,
)
from gpuserve_api import config as gateway_config
from test_argument_specs import STRUCTURED, uses

ROOT = Path(__file__).resolve().parents[2]
STAGE_ROLES = yaml.safe_load((ROOT / "playbooks/validate_inventory.yml").read_text())[0]["tasks"][
    0
]["gpuserve.vllm.validate_inventory"]["roles"]
SPECS = load_specs(STAGE_ROLES)
MODEL = {"name": "m", "source": {"type": "local", "path": "/srv/m"}}


def check(**values: Any) -> list[str]:
    return check_host(values, SPECS)


def test_the_check_covers_every_role_a_stage_playbook_runs() -> None:
    staged = set()
    for playbook in ["preflight", "gpu_stack", "vllm_build", "serve", "monitoring"]:
        text = (ROOT / "playbooks" / f"{playbook}.yml").read_text()
        assert "import_playbook: validate_inventory.yml" in text, playbook
        staged |= {
            role.removeprefix("gpuserve.vllm.")
            for role in (line.split()[-1] for line in text.splitlines() if "gpuserve.vllm." in line)
        }
    assert staged <= set(STAGE_ROLES)
    site = (ROOT / "site.yml").read_text()
    assert site.index("validate_inventory.yml") < site.index("playbooks/preflight.yml")


def test_a_misspelt_model_key_names_the_entry_and_the_real_key() -> None:
    assert check(vllm_service_models=[MODEL, MODEL | {"max_model_lenn": 4096}]) == [
        "vllm_service_models[1].max_model_lenn: unknown key; did you mean max_model_len?"
    ]


def test_a_misspelt_nested_key_and_a_key_without_a_close_name() -> None:
    source = {"type": "hf", "repo_id": "a/b", "revison": "0" * 40}
    assert check(vllm_service_models=[{"name": "m", "source": source}]) == [
        "vllm_service_models[0].source.revison: unknown key; did you mean revision?"
    ]
    (msg,) = check(gateway_api_keys=[{"name": "a", "sha256": "0" * 64, "zzz": 1}])
    assert msg == "gateway_api_keys[0].zzz: unknown key; allowed keys: key, name, sha256"


def test_a_limit_out_of_range_and_a_wrong_type() -> None:
    assert check(gateway_limits={"max_in_flight": -1, "max_tokens": "many"}) == [
        'gateway_limits.max_tokens: is "many"; must be an integer',
        "gateway_limits.max_in_flight: is -1; allowed: >= 0 (requests, 0 = no cap)",
    ]


def test_the_gateway_listen_host_is_an_address_not_a_name() -> None:
    assert check(gateway_listen_host="127.0.0.1") == []
    assert check(gateway_listen_host="::1") == []
    assert check(gateway_listen_host="localhost") == [
        'gateway_listen_host: is "localhost"; must be an IP address (127.0.0.1, ::1): '
        "the gateway's socket unit binds an address, not a host name"
    ]


def test_ports_choices_and_required_keys() -> None:
    assert check(nginx_proxy_https_port=70000) == [
        "nginx_proxy_https_port: is 70000; allowed: 1..65535 (a TCP port)"
    ]
    assert check(nginx_proxy_tls_mode="self-signed") == [
        'nginx_proxy_tls_mode: is "self-signed"; allowed: provided, selfsigned'
        " (did you mean selfsigned?)"
    ]
    assert check(vllm_service_models=[MODEL | {"listen": "tcp", "port": 80}]) == [
        "vllm_service_models[0].port: is 80;"
        " allowed: 1024..65535 (a TCP port above the privileged range)"
    ]
    (msg,) = check(vllm_service_models=[{"source": {"type": "local", "path": "/m"}}])
    assert msg.startswith("vllm_service_models[0].name: missing; this key is required")
    assert check(gateway_workers="2", nginx_proxy_https_port="8443") == []  # -e gives strings


def test_a_secret_is_never_shown() -> None:
    (msg,) = check(gateway_api_keys=[{"name": "a", "key": ["s3cr3t-value-0123456789"]}])
    assert msg == "gateway_api_keys[0].key: is (hidden); must be a string"
    (msg,) = check(nginx_proxy_tls_key={"pem": "s3cr3t"})
    assert "s3cr3t" not in msg


def test_booleans_are_not_numbers_and_null_is_refused() -> None:
    assert check(gateway_workers=True) == ["gateway_workers: is True; must be an integer"]
    assert check(gateway_limits={"max_n": None}) == [
        "gateway_limits.max_n: is empty (null); must be an integer"
    ]


def test_variables_of_no_stage_are_not_checked() -> None:
    assert check(some_other_var={"anything": 1}, ansible_connection="local") == []


@pytest.mark.parametrize(
    ("where", "name", "value"), uses(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_structured_value_the_project_uses_passes(where: str, name: str, value: Any) -> None:
    assert name in STRUCTURED
    assert check(**{name: value}) == []


def _plain(node: Any) -> bool:
    if isinstance(node, str):
        return "{{" not in node
    if isinstance(node, dict):
        return all(_plain(v) for v in node.values())
    if isinstance(node, list):
        return all(_plain(v) for v in node)
    return True


def _inventory_values() -> list[tuple[str, str, Any]]:
    files = [
        *sorted(ROOT.glob("roles/*/defaults/main.yml")),
        *sorted(ROOT.glob("molecule/*/molecule.yml")),
        *sorted(ROOT.glob("inventories/**/*.yml")),
        *sorted(ROOT.glob("tests/gpu/*/inventory.yml")),
    ]
    out = []

    def walk(where: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in SPECS and _plain(v):
                    out.append((where, k, v))
                else:
                    walk(where, v)
        elif isinstance(node, list):
            for v in node:
                walk(where, v)

    for path in files:
        walk(str(path.relative_to(ROOT)), yaml.safe_load(path.read_text()))
    return out


def test_every_plain_value_in_defaults_molecule_and_inventories_passes() -> None:
    values = _inventory_values()
    assert len(values) > 100
    assert [(w, p) for w, name, v in values for p in check(**{name: v})] == []


def _field_ge(model: type, field: str) -> Any:
    for meta in model.model_fields[field].metadata:
        if hasattr(meta, "ge"):
            return meta.ge
    raise AssertionError(f"{model.__name__}.{field} has no lower bound")


def test_the_gateway_ranges_are_the_gateway_config_models() -> None:
    table = {pattern: (low, high) for pattern, low, high, _ in RANGES}
    limits = gateway_config.Limits
    for field in limits.model_fields:
        assert table[f"gateway_limits.{field}"][0] == _field_ge(limits, field), field
    assert set(SPECS["gateway_limits"]["options"]) == set(limits.model_fields)
    workers = gateway_config.Listen.model_fields["workers"].metadata
    assert table["gateway_workers"] == (
        next(m.ge for m in workers if hasattr(m, "ge")),
        next(m.le for m in workers if hasattr(m, "le")),
    )


def test_every_secret_option_is_marked_no_log() -> None:
    secret = re.compile(r"(Vault|never logged)")
    loose = [
        name
        for name, opt in load_specs([*STAGE_ROLES, "triton_decommission"]).items()
        if opt.get("type", "str") == "str"
        and secret.search(str(opt.get("description", "")))
        and not opt.get("no_log")
    ]
    assert loose == []
