"""Fail when a role's defaults, its meta/argument_specs.yml and its entry points disagree.

- Every variable in defaults/main.yml is an option of the `main` entry point, and every
  option of any entry point has a default there.
- Every entry point names a task file (tasks/<entry>.yml). An entry point other than
  `main` declares exactly the public variables its task files read (following imports,
  includes, templates, handlers and the role's vars/main.yml), and each with the same
  spec as `main` (YAML anchors in the spec file keep one definition).
- Every `tasks_from:` of a role of this collection (in roles/, playbooks/, site.yml)
  names a declared entry point, without `.yml`: Ansible looks the spec up by that exact
  string, so `tasks_from: restore.yml` would run with no validation at all.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "roles"
COLLECTION = "gpuserve.vllm."

_INCLUDE = re.compile(
    r"(?:import_tasks|include_tasks):\s*(?:\n\s+file:\s*)?['\"]?([\w./{}\s|'\"-]+?\.yml)"
)
# A template the role renders itself (src:) or hands to a shared step (common_*_template:).
_TEMPLATE = re.compile(r"(?:src|_template):\s*['\"]?([\w./-]+\.j2)")
_TASKS_FROM = re.compile(r"name:\s*['\"]?([\w.]+)['\"]?\s*\n\s+tasks_from:\s*['\"]?([\w.-]+)")


def _load(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def entry_texts(role: Path, entry: str) -> str:
    """The text an entry point runs: its task file and what it imports, includes,
    templates and notifies, plus the role's vars/main.yml values those name."""
    seen: set[Path] = set()
    todo = [role / "tasks" / f"{entry}.yml"]
    texts: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        text = path.read_text()
        texts.append(text)
        todo += [
            role / "tasks" / name.strip() for name in _INCLUDE.findall(text) if "{" not in name
        ]
        todo += [role / "templates" / name for name in _TEMPLATE.findall(text)]
        if "notify:" in text:
            todo.append(role / "handlers" / "main.yml")
    # Role vars (computed internal values) pull in the public variables they are built from.
    role_vars = _load(role / "vars" / "main.yml")
    pending = set(role_vars)
    grown = True
    while grown:
        grown = False
        joined = "\n".join(texts)
        for name in sorted(pending):
            if re.search(rf"\b{re.escape(name)}\b", joined):
                texts.append(yaml.safe_dump({name: role_vars[name]}))
                pending.discard(name)
                grown = True
    return "\n".join(texts)


def role_problems(role: Path) -> list[str]:
    defaults = _load(role / "defaults" / "main.yml")
    specs_file = role / "meta" / "argument_specs.yml"
    if not specs_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"] if defaults else []
    specs = _load(specs_file).get("argument_specs", {}) or {}
    main = (specs.get("main", {}) or {}).get("options", {}) or {}
    # A role of shared steps (roles/common) has no defaults/main.yml: callers pass every input,
    # and a spec default is the fallback its vars/main.yml applies.
    shared_steps = not (role / "defaults" / "main.yml").exists()
    problems = [
        f"{role.name}: '{name}' is in defaults/main.yml but not in meta/argument_specs.yml (main)"
        for name in sorted(set(defaults) - set(main))
    ]
    for entry, spec in specs.items():
        options = (spec or {}).get("options", {}) or {}
        if (role / "tasks").is_dir() and not (role / "tasks" / f"{entry}.yml").exists():
            problems.append(f"{role.name}: entry point '{entry}' has no tasks/{entry}.yml")
        problems += [
            f"{role.name}: '{name}' is in meta/argument_specs.yml ({entry}) but has no default"
            for name in sorted(set(options) - set(defaults))
            if not shared_steps
        ]
        if entry == "main":
            continue
        text = entry_texts(role, entry)
        known = set(defaults) | (set(options) if shared_steps else set())
        reads = {name for name in known if re.search(rf"\b{re.escape(name)}\b", text)}
        problems += [
            f"{role.name}: entry point '{entry}' reads '{name}' but does not declare it"
            for name in sorted(reads - set(options))
        ]
        problems += [
            f"{role.name}: entry point '{entry}' declares '{name}', which it never reads"
            for name in sorted(set(options) - reads)
        ]
        problems += [
            f"{role.name}: '{name}' in entry point '{entry}' differs from its spec in main"
            " (use a YAML anchor)"
            for name in sorted(set(options) & set(main))
            if options[name] != main[name]
        ]
    return problems


def tasks_from_problems() -> list[str]:
    files = [
        ROOT / "site.yml",
        *sorted((ROOT / "playbooks").glob("*.yml")),
        *sorted(ROLES.glob("*/tasks/*.yml")),
    ]
    problems = []
    for path in files:
        for name, entry in _TASKS_FROM.findall(path.read_text()):
            role = name.removeprefix(COLLECTION)
            if not (ROLES / role).is_dir():
                continue
            specs = (
                _load(ROLES / role / "meta" / "argument_specs.yml").get("argument_specs", {}) or {}
            )
            if entry not in specs:
                problems.append(
                    f"{path.relative_to(ROOT)}: tasks_from '{entry}' of {role} is not an entry"
                    f" point of its meta/argument_specs.yml ({', '.join(sorted(specs))});"
                    " name it without .yml and declare it"
                )
    return problems


def main() -> int:
    roles = [r for r in sorted(ROLES.iterdir()) if r.is_dir()]
    problems = [p for role in roles for p in role_problems(role)] + tasks_from_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    entries = sum(
        len(_load(r / "meta" / "argument_specs.yml").get("argument_specs", {}) or {}) for r in roles
    )
    print(f"argument specs: {len(roles)} roles, {entries} entry points, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
