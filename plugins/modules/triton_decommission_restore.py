#!/usr/bin/python
"""Ansible module: restore compose files, model repository and image from a Triton backup."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuserve.vllm.plugins.module_utils.checksums import sha256_file

DOCUMENTATION = r"""
module: triton_decommission_restore
short_description: Restore what triton_decommission_backup saved (compose, models, image)
description:
  - Picks the backup I(name) under I(root) (C(latest) = the newest directory holding a
    C(manifest.json)) and checks every file of it against the manifest's sha256 first.
  - Puts back each compose file whose content differs, the model repository files that are
    missing or differ (from the backup's copy; a checksums-only backup can verify but not
    restore, and says so), and C(docker load)s a saved image that is missing.
  - Changes nothing that already matches the backup. Supports check mode.
options:
  root:
    description: Directory holding the backups.
    type: path
    required: true
  name:
    description: The backup directory name, or C(latest).
    type: str
    default: latest
extends_documentation_fragment:
  - gpuserve.vllm.triton_decommission
author: gpuserve team
"""

EXAMPLES = r"""
- name: Restore the latest Triton backup
  triton_decommission_restore:
    root: /var/backups/gpuserve/triton
"""

RETURN = r"""
path:
  description: The backup directory used.
  type: str
  returned: always
manifest:
  description: Its manifest.
  type: dict
  returned: always
actions:
  description: What was (or, in check mode, would be) restored.
  type: list
  elements: str
  returned: always
"""


def _pick(module: AnsibleModule, root: Path, name: str) -> Path:
    if name != "latest":
        path = root / name
        if not (path / "manifest.json").is_file():
            module.fail_json(msg=f"backup {path} has no manifest.json (missing or incomplete)")
        return path
    done = (
        sorted(p for p in root.glob("*") if (p / "manifest.json").is_file())
        if root.is_dir()
        else []
    )
    if not done:
        module.fail_json(msg=f"no complete backup (a directory with manifest.json) under {root}")
    return done[-1]


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    shutil.copy2(source, tmp)
    os.replace(tmp, target)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "name": {"type": "str", "default": "latest"},
            "docker_bin": {"type": "str", "default": "docker"},
        },
        supports_check_mode=True,
    )
    check = module.check_mode
    backup = _pick(module, Path(module.params["root"]), module.params["name"])
    manifest: dict[str, Any] = json.loads((backup / "manifest.json").read_text(encoding="utf-8"))
    bad = [
        rel
        for rel, sha in manifest["files"].items()
        if not (backup / rel).is_file() or sha256_file(backup / rel) != sha
    ]
    if bad:
        module.fail_json(
            msg=f"backup {backup} is damaged: {len(bad)} file(s) differ from the "
            f"manifest, first: {bad[:5]}"
        )
    actions: list[str] = []
    for entry in manifest["compose_files"]:
        target = Path(entry["path"])
        if target.is_file() and sha256_file(target) == entry["sha256"]:
            continue
        actions.append(f"restore compose file {target}")
        if not check:
            _copy_atomic(backup / entry["backup"], target)
    for repo in manifest["model_repositories"]:
        source = Path(repo["source"])
        wrong = []
        for line in (backup / repo["checksums"]).read_text(encoding="utf-8").splitlines():
            sha, rel = line.split("  ", 1)
            current = source / rel
            if not current.is_file() or sha256_file(current) != sha:
                wrong.append(rel)
        if not wrong:
            continue
        if repo["mode"] != "copy":
            module.fail_json(
                msg=f"model repository {source}: {len(wrong)} file(s) missing or "
                f"changed (first: {wrong[:5]}) and backup {backup} holds checksums "
                "only; put the model files back from their source, then rerun"
            )
        actions.append(f"restore {len(wrong)} file(s) of model repository {source}")
        if not check:
            for rel in wrong:
                _copy_atomic(backup / repo["copy"] / rel, source / rel)
    docker = module.get_bin_path(module.params["docker_bin"], required=True)
    for image in manifest["images"]:
        rc, _out, _err = module.run_command([docker, "image", "inspect", image["reference"]])
        if rc == 0:
            continue
        if not image["saved"]:
            module.fail_json(
                msg=f"image {image['reference']} is not on this host and the backup "
                f"did not save it; pull it (id {image['id']}, digests "
                f"{image['repo_digests']}) and rerun"
            )
        actions.append(f"docker load {image['saved']}")
        if not check:
            rc, _out, err = module.run_command([docker, "load", "-i", str(backup / image["saved"])])
            if rc != 0:
                module.fail_json(msg=f"docker load of {image['saved']} failed: {err.strip()}")
    module.exit_json(changed=bool(actions), path=str(backup), manifest=manifest, actions=actions)


if __name__ == "__main__":
    main()
