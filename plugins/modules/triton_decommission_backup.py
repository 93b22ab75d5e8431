#!/usr/bin/python
"""Ansible module: back up what a Triton decommission removes, with a checksummed manifest."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuserve.vllm.plugins.module_utils.checksums import sha256_file

DOCUMENTATION = r"""
module: triton_decommission_backup
short_description: Back up Triton's compose files, model repository, inspect output and image
description:
  - Creates I(root)/I(name)/ holding C(compose/) (each compose file and the project's C(.env)),
    C(containers/<name>.json) (C(docker inspect)), C(images.json) (reference, id, digests),
    C(model_repository/<n>/) (a copy) or C(model_repository/<n>.sha256) (checksums only) per
    model repository, optionally C(images/<n>.tar) (C(docker save)), and last C(manifest.json)
    listing every file with its sha256. A backup without C(manifest.json) is incomplete.
  - I(model_mode=auto) copies a model repository up to I(copy_max_mb) and writes checksums only
    above that.
  - Supports check mode (reports what it would back up, writes nothing).
options:
  root:
    description: Directory holding the backups.
    type: path
    required: true
  name:
    description: This backup's directory name (a UTC timestamp).
    type: str
    required: true
  containers:
    description: The C(containers) list of triton_decommission_facts.
    type: list
    elements: dict
    required: true
  compose:
    description: The C(compose) list of triton_decommission_facts.
    type: list
    elements: dict
    required: true
  model_mode:
    description: copy, manifest or auto.
    type: str
    choices: [auto, copy, manifest]
    default: auto
  copy_max_mb:
    description: Largest model repository (MiB) that auto copies.
    type: int
    default: 2048
  save_image:
    description: Also C(docker save) each Triton image into the backup.
    type: bool
    default: false
extends_documentation_fragment:
  - gpuserve.vllm.triton_decommission
author: gpuserve team
"""

EXAMPLES = r"""
- name: Back up Triton
  triton_decommission_backup:
    root: /var/backups/gpuserve/triton
    name: 20260101T000000Z
    containers: "{{ __triton_decommission_found.containers }}"
    compose: "{{ __triton_decommission_found.compose }}"
"""

RETURN = r"""
path:
  description: The backup directory.
  type: str
  returned: always
manifest:
  description: The manifest written (or that would be written in check mode).
  type: dict
  returned: always
"""

FORMAT = 1


def _tree(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in _tree(root))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_")


def run_argv(inspect: dict[str, Any]) -> list[str]:
    """A `docker run` command line re-creating a container not managed by compose."""
    cfg, host = inspect["Config"], inspect.get("HostConfig") or {}
    argv = ["run", "-d", "--name", inspect["Name"].lstrip("/")]
    policy = (host.get("RestartPolicy") or {}).get("Name")
    if policy and policy != "no":
        argv += ["--restart", policy]
    for spec, binds in sorted((host.get("PortBindings") or {}).items()):
        for bind in binds or []:
            ip = f"{bind['HostIp']}:" if bind.get("HostIp") else ""
            argv += ["-p", f"{ip}{bind.get('HostPort', '')}:{spec}"]
    for mount in inspect.get("Mounts") or []:
        source = mount["Source"] if mount["Type"] == "bind" else mount.get("Name", "")
        argv += ["-v", f"{source}:{mount['Destination']}{'' if mount.get('RW', True) else ':ro'}"]
    for env in cfg.get("Env") or []:
        argv += ["-e", env]
    if host.get("DeviceRequests"):
        argv += ["--gpus", "all"]
    if host.get("ShmSize"):
        argv += ["--shm-size", str(host["ShmSize"])]
    if host.get("IpcMode") in ("host", "shareable"):
        argv += ["--ipc", host["IpcMode"]]
    network = host.get("NetworkMode")
    if network and network not in ("default", "bridge"):
        argv += ["--network", network]
    if cfg.get("Entrypoint"):
        argv += ["--entrypoint", cfg["Entrypoint"][0]]
    return [*argv, cfg["Image"], *(cfg.get("Entrypoint") or [])[1:], *(cfg.get("Cmd") or [])]


class Backup:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.dest = Path(self.p["root"]) / self.p["name"]
        self.docker = module.get_bin_path(self.p["docker_bin"], required=True)
        self.files: dict[str, str] = {}

    def _record(self, path: Path) -> None:
        self.files[str(path.relative_to(self.dest))] = sha256_file(path)

    def _write(self, rel: str, text: str) -> None:
        path = self.dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self._record(path)

    def _copy(self, source: Path, rel: str) -> None:
        path = self.dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, path)
        self._record(path)

    def compose(self) -> list[dict[str, Any]]:
        out = []
        for project in self.p["compose"]:
            files = list(project["config_files"])
            if os.path.isfile(project["env_file"]):
                files.append(project["env_file"])
            for index, source in enumerate(files):
                rel = f"compose/{_slug(project['project'])}/{index}-{os.path.basename(source)}"
                out.append(
                    {
                        "project": project["project"],
                        "path": source,
                        "backup": rel,
                        "sha256": sha256_file(Path(source)),
                    }
                )
                if not self.module.check_mode:
                    self._copy(Path(source), rel)
        return out

    def model_repositories(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for container in self.p["containers"]:
            repo = container.get("model_repository")
            if not repo or repo["source"] in seen:
                continue
            seen.add(repo["source"])
            source = Path(repo["source"])
            if not source.is_dir():
                self.module.fail_json(
                    msg=f"model repository {source} of {container['name']} is "
                    "not a directory on this host"
                )
            size = _size(source)
            mode = self.p["model_mode"]
            if mode == "auto":
                mode = "copy" if size <= self.p["copy_max_mb"] * 1024 * 1024 else "manifest"
            slug = _slug(container["name"])
            entry = {
                "source": str(source),
                "container": container["name"],
                "mode": mode,
                "bytes": size,
                "files": len(_tree(source)),
                "checksums": f"model_repository/{slug}.sha256",
                "copy": f"model_repository/{slug}" if mode == "copy" else "",
            }
            out.append(entry)
            if self.module.check_mode:
                continue
            lines = [f"{sha256_file(f)}  {f.relative_to(source)}\n" for f in _tree(source)]
            self._write(entry["checksums"], "".join(lines))
            if mode == "copy":
                target = self.dest / entry["copy"]
                shutil.copytree(source, target, symlinks=True)
                for path in _tree(target):
                    self._record(path)
        return out

    def images(self) -> list[dict[str, Any]]:
        out = []
        for ref in sorted({c["image"] for c in self.p["containers"]}):
            rc, text, _err = self.module.run_command([self.docker, "image", "inspect", ref])
            info = json.loads(text)[0] if rc == 0 else {}
            entry = {
                "reference": ref,
                "id": info.get("Id", ""),
                "repo_digests": info.get("RepoDigests") or [],
                "saved": "",
            }
            if self.p["save_image"] and info:
                entry["saved"] = f"images/{_slug(ref)}.tar"
                if not self.module.check_mode:
                    (self.dest / "images").mkdir(parents=True, exist_ok=True)
                    rc, _o, err = self.module.run_command(
                        [self.docker, "save", "-o", str(self.dest / entry["saved"]), ref]
                    )
                    if rc != 0:
                        self.module.fail_json(msg=f"docker save {ref} failed: {err.strip()}")
                    self._record(self.dest / entry["saved"])
            out.append(entry)
        return out

    def run(self) -> dict[str, Any]:
        if (self.dest / "manifest.json").exists():
            self.module.fail_json(msg=f"backup {self.dest} already exists")
        if not self.module.check_mode:
            self.dest.mkdir(parents=True, mode=0o700, exist_ok=True)
        containers = []
        for c in self.p["containers"]:
            rel = f"containers/{_slug(c['name'])}.json"
            if not self.module.check_mode:
                self._write(rel, json.dumps(c["inspect"], indent=2, sort_keys=True) + "\n")
            containers.append(
                {
                    "name": c["name"],
                    "id": c["id"],
                    "image": c["image"],
                    "image_id": c["image_id"],
                    "running": c["running"],
                    "compose": c["compose"],
                    "ports": c["ports"],
                    "http_ports": c["http_ports"],
                    "grpc_ports": c.get("grpc_ports", []),
                    "model_repository": c["model_repository"],
                    "inspect": rel,
                    "run_argv": [] if c["compose"] else run_argv(c["inspect"]),
                }
            )
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            "name": self.p["name"],
            "containers": containers,
            "compose_projects": self.p["compose"],
            "compose_files": self.compose(),
            "model_repositories": self.model_repositories(),
            "images": self.images(),
        }
        manifest["files"] = dict(sorted(self.files.items()))
        if not self.module.check_mode:
            tmp = self.dest / ".manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            tmp.rename(self.dest / "manifest.json")
        return manifest


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "containers": {"type": "list", "elements": "dict", "required": True},
            "compose": {"type": "list", "elements": "dict", "required": True},
            "model_mode": {
                "type": "str",
                "choices": ["auto", "copy", "manifest"],
                "default": "auto",
            },
            "copy_max_mb": {"type": "int", "default": 2048},
            "save_image": {"type": "bool", "default": False},
            "docker_bin": {"type": "str", "default": "docker"},
        },
        supports_check_mode=True,
    )
    backup = Backup(module)
    manifest = backup.run()
    module.exit_json(changed=True, path=str(backup.dest), manifest=manifest)


if __name__ == "__main__":
    main()
