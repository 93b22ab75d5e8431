#!/usr/bin/python
"""Ansible module: remove one service from a compose file, keeping every other line and comment."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: triton_decommission_compose
short_description: Remove a service from a docker compose file and keep the rest byte for byte
description:
  - Parses the file with ruamel.yaml's round-trip loader to find where the service's block
    starts and ends, removes exactly those lines (with the comment lines directly above the
    service's key), and leaves every other line, comment and blank line untouched.
  - Comments and blank lines just before the next service, or before the next top-level key,
    stay, as they belong to what follows.
  - The result is parsed again and must hold the same data minus the service, else nothing is
    written. An optional I(validate) command (C(%s) = a temporary copy next to the file, so
    relative paths and C(.env) resolve) must succeed before the file is replaced atomically.
  - Refuses flow-style (C({...})) services mappings. Supports check mode and diff.
options:
  path:
    description: The compose file.
    type: path
    required: true
  service:
    description: The service to remove.
    type: str
    required: true
  validate:
    description: Command run on the edited temporary copy (C(%s)); non-zero keeps the old file.
    type: str
author: gpuserve team
requirements: [ruamel.yaml]
"""

EXAMPLES = r"""
- name: Remove the triton service
  triton_decommission_compose:
    path: /srv/triton/docker-compose.yml
    service: triton
    validate: docker compose -f %s config -q
"""

RETURN = r"""
remaining_services:
  description: The services left in the file.
  type: list
  elements: str
  returned: always
removed_lines:
  description: How many lines were removed.
  type: int
  returned: always
"""


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], data: Any, service: str) -> tuple[int, int]:
    """Line range [start, end) of the service's key, its value and its header comments."""
    services = data["services"]
    keys = list(services)
    index = keys.index(service)
    start = services.lc.key(service)[0]
    column = services.lc.key(service)[1]
    if index + 1 < len(keys):
        end = services.lc.key(keys[index + 1])[0]
    else:
        top = list(data)
        after = top.index("services") + 1
        end = data.lc.key(top[after])[0] if after < len(top) else len(lines)
    # What precedes the next key at this level or above (its comments, blank lines) is kept.
    while (
        end > start + 1
        and _is_comment_or_blank(lines[end - 1])
        and (not lines[end - 1].strip() or _indent(lines[end - 1]) <= column)
    ):
        end -= 1
    # Comment lines directly above the key, at its indentation, are the service's header.
    while (
        start > 0
        and lines[start - 1].strip().startswith("#")
        and _indent(lines[start - 1]) == column
    ):
        start -= 1
    # One blank line too many would be left behind (after `services:` or after a blank line).
    if (
        end < len(lines)
        and not lines[end].strip()
        and (start == 0 or not lines[start - 1].strip() or lines[start - 1].rstrip().endswith(":"))
    ):
        end += 1
    return start, end


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "service": {"type": "str", "required": True},
            "validate": {"type": "str"},
        },
        supports_check_mode=True,
    )
    path, service = module.params["path"], module.params["service"]
    try:
        from ruamel.yaml import YAML
    except ImportError:
        module.fail_json(msg="ruamel.yaml is missing on the host (Debian: python3-ruamel.yaml)")
    yaml = YAML(typ="rt")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    data = yaml.load(text)
    services = (data or {}).get("services") if hasattr(data, "get") else None
    if services is None:
        module.fail_json(msg=f"{path}: no top-level 'services' mapping")
    if service not in services:
        module.exit_json(changed=False, remaining_services=list(services), removed_lines=0)
    if services.fa.flow_style() or services[service] is None:
        module.fail_json(
            msg=f"{path}: services written in flow style ({{...}}) are not edited; "
            f"remove '{service}' by hand"
        )
    lines = text.splitlines(keepends=True)
    start, end = _block(lines, data, service)
    new_text = "".join(lines[:start] + lines[end:])
    new_data = yaml.load(new_text)
    expected = _plain(data)
    del expected["services"][service]
    if _plain(new_data) != expected:
        module.fail_json(
            msg=f"{path}: removing lines {start + 1}-{end} of '{service}' would change "
            "other content; edit the file by hand"
        )
    result: dict[str, Any] = {
        "changed": True,
        "remaining_services": list(new_data["services"] or {}),
        "removed_lines": end - start,
        "diff": {"before": text, "after": new_text, "before_header": path, "after_header": path},
    }
    if module.check_mode:
        module.exit_json(**result)
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".gpuserve-tmp.yml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new_text)
        if module.params["validate"]:
            rc, out, err = module.run_command(module.params["validate"] % tmp, cwd=directory)
            if rc != 0:
                module.fail_json(
                    msg=f"validation of the edited {path} failed: {(err or out).strip()}"
                )
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
