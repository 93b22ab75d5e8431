"""The roles' argument specs, run through Ansible's own validator (the code behind
validate_argument_spec), against the model lists this project itself uses: the defaults,
every Molecule inventory and the YAML examples in the docs. A key any of them uses and the
spec does not declare would stop those runs before the role's first task."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]


def spec(role: str, entry: str = "main") -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return data["argument_specs"][entry]["options"]


def validate(role: str, values: dict[str, Any], entry: str = "main") -> list[str]:
    # In a play every option comes from the role's defaults (templated), so no spec default
    # applies; here only `values` are checked. validate_role_argument_spec=True is how the
    # validate_argument_spec action calls it (ansible/plugins/action/validate_argument_spec.py).
    options = {k: v for k, v in spec(role, entry).items() if k in values}
    options = {k: {a: b for a, b in v.items() if a != "default"} for k, v in options.items()}
    result = ArgumentSpecValidator(options).validate(values, validate_role_argument_spec=True)
    return [str(e) for e in result.errors]


# Structured variables whose specs declare their keys, and the role that reads each.
STRUCTURED = {
    "vllm_service_models": "vllm_service",
    "gateway_upstreams": "gateway",
    "gateway_api_keys": "gateway",
    "gateway_limits": "gateway",
    "gateway_upstream_timeouts": "gateway",
    "monitoring_vllm_instances": "monitoring",
}


def _find(node: Any, name: str) -> list[Any]:
    if isinstance(node, dict):
        here = [node[name]] if name in node and not isinstance(node[name], str) else []
        return here + [x for k, v in node.items() if k != name for x in _find(v, name)]
    if isinstance(node, list):
        return [x for v in node for x in _find(v, name)]
    return []


def _yaml_sources() -> list[tuple[str, Any]]:
    """(where, data): role defaults, Molecule scenarios, example inventories, docs examples."""
    out = []
    files = [
        *sorted(ROOT.glob("roles/*/defaults/main.yml")),
        *sorted(ROOT.glob("molecule/*/molecule.yml")),
        *sorted(p for p in ROOT.glob("inventories/**/*") if p.suffix in {".yml", ".example"}),
        *sorted(ROOT.glob("tests/gpu/*/inventory.yml")),
    ]
    out += [(str(p.relative_to(ROOT)), yaml.safe_load(p.read_text())) for p in files]
    for path in [*sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("roles/*/README.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S):
            try:
                out.append((str(path.relative_to(ROOT)), yaml.safe_load(block)))
            except yaml.YAMLError:
                continue
    return out


def uses() -> list[tuple[str, str, Any]]:
    """(where, variable, value) for every structured value this project writes down."""
    sources = _yaml_sources()
    found = [
        (w, name, v)
        for w, data in sources
        for name in STRUCTURED
        for v in _find(data, name)
        if not (isinstance(v, str) and "{{" in v)  # templated: its parts are checked on their own
    ]
    # The vault example holds the keys that gateway_api_keys points at.
    found += [
        (w, "gateway_api_keys", v) for w, d in sources for v in _find(d, "vault_gateway_api_keys")
    ]
    return found


@pytest.mark.parametrize(
    ("where", "name", "value"), uses(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_structured_value_the_project_uses_passes_the_spec(
    where: str, name: str, value: Any
) -> None:
    assert validate(STRUCTURED[name], {name: value}) == []


def test_the_scan_finds_the_model_lists() -> None:
    wheres = {w for w, name, _ in uses() if name == "vllm_service_models"}
    assert {
        "roles/vllm_service/defaults/main.yml",
        "molecule/serve/molecule.yml",
        "docs/serving.md",
    } <= wheres


def test_a_misspelt_model_key_is_refused_by_name() -> None:
    models = [
        {"name": "phi-2", "source": {"type": "local", "path": "/m"}, "max_model_length": 2048}
    ]
    (error,) = validate("vllm_service", {"vllm_service_models": models})
    assert "vllm_service_models.max_model_length" in error
    assert "max_model_len" in error  # the supported keys are listed


def test_an_unknown_source_type_is_refused() -> None:
    models = [{"name": "phi-2", "source": {"type": "s3", "url": "s3://b/m"}}]
    (error,) = validate("vllm_service", {"vllm_service_models": models})
    assert "hf, local, archive" in error
    assert "got: s3" in error


def test_the_retire_entry_point_validates_the_same_models() -> None:
    assert (
        spec("vllm_service", "retire")["vllm_service_models"]
        == spec("vllm_service")["vllm_service_models"]
    )


def test_a_misspelt_gateway_limit_is_refused() -> None:
    (error,) = validate("gateway", {"gateway_limits": {"max_tokens": 10, "max_inflight": 3}})
    assert "gateway_limits.max_inflight" in error


def test_the_gateway_accepts_the_upstreams_vllm_service_hands_it() -> None:
    # The shape of vllm_service's _vllm_service_upstreams (roles/vllm_service/vars/main.yml).
    upstreams = [
        {"name": "tiny", "aliases": ["tiny-model"], "uds": "/run/vllm/tiny.sock", "required": True},
        {"name": "other", "aliases": [], "base_url": "http://127.0.0.1:8101", "required": True},
    ]
    assert validate("gateway", {"gateway_upstreams": upstreams}) == []
    assert validate("monitoring", {"monitoring_vllm_instances": upstreams}) == []


def _checker():
    loader = importlib.util.spec_from_file_location(
        "check_argument_specs", ROOT / "tests/check_argument_specs.py"
    )
    assert loader
    assert loader.loader
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def test_the_spec_check_passes_on_this_tree() -> None:
    check = _checker()
    assert [
        p
        for role in sorted(check.ROLES.iterdir())
        if role.is_dir()
        for p in check.role_problems(role)
    ] == []
    assert check.tasks_from_problems() == []


def test_the_spec_check_finds_an_entry_point_that_misses_what_it_reads(
    tmp_path: Path, monkeypatch
) -> None:
    role = tmp_path / "roles" / "r"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text("r_a: 1\nr_b: 2\n")
    (role / "tasks" / "main.yml").write_text("- ansible.builtin.debug: {msg: '{{ r_a }}'}\n")
    (role / "tasks" / "other.yml").write_text("- ansible.builtin.import_tasks: more.yml\n")
    (role / "tasks" / "more.yml").write_text("- ansible.builtin.debug: {msg: '{{ r_b }}'}\n")
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    options:\n      r_a: {type: int}\n      r_b: {type: int}\n"
        "  other:\n    options:\n      r_a: {type: int}\n"
    )
    problems = _checker().role_problems(role)
    assert "r: entry point 'other' reads 'r_b' but does not declare it" in problems
    assert "r: entry point 'other' declares 'r_a', which it never reads" in problems


def test_the_gpu_machine_model_sets_pass_the_spec() -> None:
    # tests/gpu/machine/inventory.yml builds each set from one entry and a source (templated):
    # a typo there would only show on the GPU host, after minutes of staging.
    inventory = yaml.safe_load((ROOT / "tests/gpu/machine/inventory.yml").read_text())
    machine_vars = inventory["all"]["children"]["gpu_hosts"]["vars"]
    entry = machine_vars["gpu_machine_model"]
    for name, source in machine_vars["gpu_machine_sources"].items():
        assert validate("vllm_service", {"vllm_service_models": [entry | source]}) == [], name
