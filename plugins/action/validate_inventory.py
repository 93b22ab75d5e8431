"""Check a host's variables against the roles' argument specs before any host changes.

playbooks/validate_inventory.yml runs this first (site.yml and every stage playbook import
it). For every option of the named roles' `main` entry point that the inventory (or -e)
sets for the host, the value is checked strictly against meta/argument_specs.yml: type,
choices, the keys of dicts and list entries that declare `options` (an unknown key is
refused with the closest known name), `required` sub-keys, and the ranges in RANGES that a
spec cannot express. Every problem is one line naming the variable's path
(`gateway_limits.max_in_flight`, `vllm_service_models[0].max_model_len`), what is wrong and
what is allowed. Values are never printed for options marked `no_log`.

Variables the inventory does not set are the roles' defaults, checked by
tests/check_argument_specs.py and the unit tests; a value that cannot be templated on the
controller before facts exist (it names a fact) is left to the role's own validation.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
from pathlib import Path
from typing import Any

import yaml
from ansible.errors import AnsibleError
from ansible.module_utils.common.validation import (
    check_type_bool,
    check_type_dict,
    check_type_float,
    check_type_int,
    check_type_list,
)
from ansible.plugins.action import ActionBase

DOCUMENTATION = """
module: validate_inventory
short_description: Check a host's variables against the roles' argument specs
description:
  - Fails with one line per problem (variable path, what is wrong, what is allowed).
  - Changes nothing.
options:
  roles:
    description: Role names of this collection whose main entry point is checked.
    type: list
    elements: str
    required: true
"""

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"

# Ranges an argument spec cannot express: (path pattern, low, high, what it is). A path is
# the variable's path with list indexes as [] (vllm_service_models[].port); the first match
# wins. gateway_limits and gateway_workers mirror the gateway's own config model
# (files/api/gpuserve_api/config.py); tests/unit/test_validate_inventory.py keeps them equal.
RANGES: tuple[tuple[str, int | float, int | float | None, str], ...] = (
    ("vllm_service_models[].port", 1024, 65535, "a TCP port above the privileged range"),
    ("vllm_service_models[].max_model_len", 1, None, "tokens"),
    ("vllm_service_models[].tensor_parallel_size", 1, None, "GPUs"),
    ("vllm_service_models[].gpu_memory_utilization", 0.01, 1.0, "a fraction of GPU memory"),
    ("vllm_service_models[].health_timeout", 1, None, "seconds"),
    ("gateway_workers", 1, 64, "uvicorn workers"),
    ("gateway_limits.max_tokens", 1, None, "tokens"),
    ("gateway_limits.max_n", 1, None, "completions per request"),
    ("gateway_limits.max_prompt_chars", 1, None, "characters"),
    ("gateway_limits.max_body_bytes", 1024, None, "bytes"),
    ("gateway_limits.max_in_flight", 0, None, "requests, 0 = no cap"),
    ("gateway_limits.max_in_flight_per_key", 0, None, "requests, 0 = no cap"),
    ("gateway_limits.retry_after_seconds", 0, None, "seconds"),
    ("gateway_limits.max_header_bytes", 1024, None, "bytes"),
    ("gateway_limits.max_headers", 8, None, "headers"),
    ("gateway_upstream_timeouts.*", 0.001, None, "seconds"),
    ("gateway_upstreams[].timeouts.*", 0.001, None, "seconds"),
    ("*_port", 1, 65535, "a TCP port"),
    ("*_timeout", 1, None, "seconds"),
    ("*_retries", 0, None, "retries"),
    ("nginx_proxy_selfsigned_days", 1, None, "days"),
    ("nginx_proxy_worker_connections", 1, None, "connections"),
    ("nginx_proxy_upstream_keepalive", 0, None, "connections"),
    ("nginx_proxy_rate_burst", 0, None, "requests"),
    ("nginx_proxy_conn_limit", 1, None, "connections"),
    ("nginx_proxy_hsts_max_age", 0, None, "seconds, 0 = no header"),
)

# Values that must be IP addresses: systemd's socket unit (ListenStream=) binds an address, it
# does not resolve a host name.
IP_ADDRESSES = frozenset({"gateway_listen_host"})

_CHECKS = {
    "int": check_type_int,
    "float": check_type_float,
    "bool": check_type_bool,
    "list": check_type_list,
    "dict": check_type_dict,
}
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
    "str": "a string",
    "path": "a path (a string)",
}


def load_specs(roles: list[str], roles_dir: Path = ROLES_DIR) -> dict[str, dict[str, Any]]:
    """Option name -> its spec, over the main entry points of the roles (first role wins)."""
    options: dict[str, dict[str, Any]] = {}
    for role in roles:
        path = roles_dir / role / "meta" / "argument_specs.yml"
        if not path.exists():
            raise AnsibleError(f"validate_inventory: role {role} has no {path}")
        spec = yaml.safe_load(path.read_text())["argument_specs"]["main"].get("options", {})
        for name, opt in spec.items():
            options.setdefault(name, opt)
    return options


def _range_for(pattern_path: str) -> tuple[int | float, int | float | None, str] | None:
    for pattern, low, high, what in RANGES:
        if fnmatch.fnmatchcase(pattern_path, pattern):
            return low, high, what
    return None


def _allowed_range(low: int | float, high: int | float | None, what: str) -> str:
    return f"{low}..{high} ({what})" if high is not None else f">= {low} ({what})"


def _show(value: Any, secret: bool) -> str:
    if secret:
        return "(hidden)"
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"allowed keys: {', '.join(sorted(known))}"
    return f"{path}.{key}: unknown key; {hint}"


def check_value(
    path: str, pattern: str, value: Any, spec: dict[str, Any], secret: bool = False
) -> list[str]:
    """The problems of one value against its option spec, one line each."""
    secret = secret or bool(spec.get("no_log"))
    kind = spec.get("type", "str")
    problems: list[str] = []
    if value is None:
        return [f"{path}: is empty (null); must be {_TYPE_WORDS.get(kind, kind)}"]
    if kind in ("str", "path"):
        if isinstance(value, dict | list):
            return [f"{path}: is {_show(value, secret)}; must be {_TYPE_WORDS[kind]}"]
        if isinstance(value, bool):
            return [f"{path}: is {value}; must be {_TYPE_WORDS[kind]} (quote it)"]
        value = str(value)
    elif kind in _CHECKS:
        if kind in ("int", "float") and isinstance(value, bool):
            return [f"{path}: is {value}; must be {_TYPE_WORDS[kind]}"]
        try:
            value = _CHECKS[kind](value)
        except (TypeError, ValueError):
            return [f"{path}: is {_show(value, secret)}; must be {_TYPE_WORDS[kind]}"]
    if pattern in IP_ADDRESSES:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return [
                f"{path}: is {_show(value, secret)}; must be an IP address (127.0.0.1, ::1): "
                "the gateway's socket unit binds an address, not a host name"
            ]
    choices = spec.get("choices")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(
            f"{path}: is {_show(value, secret)}; allowed: {', '.join(map(str, choices))}{hint}"
        )
    if kind in ("int", "float"):
        bounds = _range_for(pattern)
        if bounds is not None:
            low, high, what = bounds
            if value < low or (high is not None and value > high):
                problems.append(
                    f"{path}: is {_show(value, secret)}; allowed: {_allowed_range(low, high, what)}"
                )
    if kind == "dict" and spec.get("options"):
        problems += _check_keys(path, pattern, value, spec["options"], secret)
    if kind == "list":
        elements = spec.get("elements")
        for i, item in enumerate(value):
            if elements is None:
                continue
            item_spec = {
                "type": elements,
                "options": spec.get("options"),
                "choices": spec.get("choices"),
            }
            problems += check_value(f"{path}[{i}]", f"{pattern}[]", item, item_spec, secret)
    return problems


def _check_keys(
    path: str, pattern: str, value: dict[str, Any], options: dict[str, Any], secret: bool
) -> list[str]:
    problems: list[str] = []
    known = list(options)
    for key in value:
        if key not in options:
            problems.append(_unknown_key(path, str(key), known))
    for key, opt in options.items():
        if key in value:
            problems += check_value(f"{path}.{key}", f"{pattern}.{key}", value[key], opt, secret)
        elif opt.get("required"):
            problems.append(f"{path}.{key}: missing; this key is required")
    return problems


def check_host(values: dict[str, Any], specs: dict[str, dict[str, Any]]) -> list[str]:
    """Every problem of the variables a host sets (name -> templated value)."""
    problems: list[str] = []
    for name, value in values.items():
        if name in specs:
            problems += check_value(name, name, value, specs[name])
    return problems


class ActionModule(ActionBase):
    """Template the host's values of the roles' options and check them; change nothing."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("roles",))

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        roles = self._task.args.get("roles") or []
        if not isinstance(roles, list) or not roles:
            return {
                "failed": True,
                "msg": "validate_inventory: roles must be a non-empty list of role names",
            }
        specs = load_specs([str(r) for r in roles])
        values: dict[str, Any] = {}
        unchecked: list[str] = []
        for name in specs:
            if name not in task_vars:
                continue
            try:
                values[name] = self._templar.template(task_vars[name])
            except AnsibleError:
                unchecked.append(name)  # names a fact or a variable not known yet
        problems = check_host(values, specs)
        result.update(changed=False, checked=sorted(values), unchecked=sorted(unchecked))
        if problems:
            host = task_vars.get("inventory_hostname", "this host")
            result["failed"] = True
            result["msg"] = (
                f"{len(problems)} inventory value(s) refused for {host} before any change:\n"
                + "\n".join(f"- {p}" for p in problems)
            )
        return result
