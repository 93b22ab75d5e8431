"""Fail when a role's defaults and its meta/argument_specs.yml disagree.

Every variable in defaults/main.yml must be documented as an option of the
`main` entry point, and every documented option must have a default there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"


def role_problems(role: Path) -> list[str]:
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    defaults_text = defaults_file.read_text() if defaults_file.exists() else ""
    defaults = set(yaml.safe_load(defaults_text) or {})
    if not specs_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"] if defaults else []
    specs = yaml.safe_load(specs_file.read_text()) or {}
    options = set(specs.get("argument_specs", {}).get("main", {}).get("options", {}) or {})
    problems = [
        f"{role.name}: '{name}' is in defaults/main.yml but not in meta/argument_specs.yml"
        for name in sorted(defaults - options)
    ]
    problems += [
        f"{role.name}: '{name}' is in meta/argument_specs.yml but has no default"
        for name in sorted(options - defaults)
    ]
    return problems


def main() -> int:
    problems = [p for role in sorted(ROLES.iterdir()) if role.is_dir() for p in role_problems(role)]
    for problem in problems:
        print(problem, file=sys.stderr)
    checked = sum(1 for r in ROLES.iterdir() if r.is_dir())
    print(f"argument specs: {checked} roles checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
