"""Every module of the collection documents itself: ansible-doc renders it (doc fragments
resolved) and its EXAMPLES and RETURN are valid YAML."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py"))


def _doc_strings(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
        and isinstance(node.value, ast.Constant)
    }


@pytest.mark.parametrize("name", MODULES)
def test_module_doc_renders_with_ansible_doc(name: str) -> None:
    ansible_doc = Path(sys.executable).with_name("ansible-doc")
    run = subprocess.run(
        [str(ansible_doc), "--json", f"gpuserve.vllm.{name}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)[f"gpuserve.vllm.{name}"]["doc"]
    assert doc["module"] == name
    assert doc["short_description"]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_and_return_are_yaml(name: str) -> None:
    docs = _doc_strings(ROOT / "plugins" / "modules" / f"{name}.py")
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    assert isinstance(yaml.safe_load(docs["EXAMPLES"]), list)
    assert isinstance(yaml.safe_load(docs["RETURN"]), dict)


def test_shared_docker_bin_option_comes_from_the_doc_fragment() -> None:
    for name in ("backup", "facts", "restore"):
        documentation = yaml.safe_load(
            _doc_strings(ROOT / "plugins/modules" / f"triton_decommission_{name}.py")[
                "DOCUMENTATION"
            ]
        )
        assert "docker_bin" not in documentation["options"]
        assert documentation["extends_documentation_fragment"] == [
            "gpuserve.vllm.triton_decommission"
        ]
