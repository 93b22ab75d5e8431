"""No role reads another role's private variables.

A role's variables are `<role>_*` (public), `_<role>_*` (internal constants, set facts) and
`__<role>_*` (registered results); only the role itself may name its `_`/`__` ones. The
shared steps' role `common` follows the same rule: its `common_*` inputs and outputs are
public (roles/common/meta/argument_specs.yml), its `_common_*`/`__common_*` stay inside it.
Lint-level check: it reads the role files as text (tasks, handlers, vars, defaults, meta,
templates); about 0.5 s.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
ROLE_NAMES = sorted((p.name for p in ROLES.iterdir() if p.is_dir()), key=len, reverse=True)
# A name that starts with one or more underscores, not inside a longer word.
PRIVATE = re.compile(r"(?<![A-Za-z0-9_])(_+)([a-z][a-z0-9_]*)")
SCANNED = ("tasks", "handlers", "vars", "defaults", "meta", "templates")


def owner(name: str) -> str | None:
    """The role whose private variable `name` is, or None when it is nobody's."""
    match = PRIVATE.fullmatch(name)
    if not match:
        return None
    rest = match.group(2)
    return next((role for role in ROLE_NAMES if rest.startswith(role + "_")), None)


def names_in(text: str) -> set[str]:
    return {m.group(0) for m in PRIVATE.finditer(text)}


def cross_role_reads(role: str, text: str, defined: dict[str, set[str]]) -> list[str]:
    """Private names of other roles in `text`; a name counts only where its owner uses it too
    (so a file name such as `_gpuserve_existing_torch.pth` is nobody's variable)."""
    others = {n for n in names_in(text) if owner(n) not in (None, role)}
    return sorted(n for n in others if n in defined.get(owner(n) or "", set()))


def role_files(role: Path) -> list[Path]:
    return sorted(
        f
        for sub in SCANNED
        if (role / sub).is_dir()
        for f in (role / sub).rglob("*")
        if f.is_file() and f.suffix in (".yml", ".yaml", ".j2")
    )


def names_by_role() -> dict[str, set[str]]:
    return {
        r: {n for f in role_files(ROLES / r) for n in names_in(f.read_text())} for r in ROLE_NAMES
    }


def test_the_check_recognises_private_names() -> None:
    assert owner("__gateway_api_installed") == "gateway"
    assert owner("_vllm_service_instances") == "vllm_service"
    assert owner("common_cuda_repo_ready") is None
    assert owner("__common_apt_lists") == "common"
    assert owner("_common_pip_args") == "common"
    assert owner("gateway_venv") is None
    defined = {"gateway": {"__gateway_api_installed"}}
    text = "x: '{{ __gateway_api_installed is changed }}'"
    assert cross_role_reads("vllm_service", text, defined) == ["__gateway_api_installed"]
    assert cross_role_reads("gateway", text, defined) == []
    assert cross_role_reads("vllm_service", "dest: _gateway_x.pth", defined) == []


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_role_reads_no_other_roles_private_variables(role: str) -> None:
    files = role_files(ROLES / role)
    assert files, f"roles/{role} has no files to check"
    defined = names_by_role()
    problems = [
        f"{f.relative_to(ROOT)}: {name} (private to {owner(name)})"
        for f in files
        for name in cross_role_reads(role, f.read_text(), defined)
    ]
    assert not problems, "\n".join(problems)
