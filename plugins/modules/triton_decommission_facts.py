#!/usr/bin/python
"""Ansible module: find the Triton containers of a host, read-only (docker CLI + compose files)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: triton_decommission_facts
short_description: Discover Triton containers, their compose project, ports and model repository
description:
  - Lists every container (running or not) through the docker CLI and keeps those whose image
    matches one of I(image_patterns) or whose name is in I(container_names), optionally only in
    the compose projects of I(compose_projects).
  - For each one reports the compose project, service, working directory and files (from the
    C(com.docker.compose.*) labels), the published ports, the model repository (the mount
    holding C(--model-repository)), and the full C(docker inspect) output.
  - Reads each compose file (ruamel.yaml, else PyYAML) to report the other services in it,
    the services that depend on a Triton service, and whether Triton was all the file held.
  - Read-only; supports check mode.
options:
  image_patterns:
    description: Shell-style patterns matched against the container's image reference.
    type: list
    elements: str
    default: ["nvcr.io/nvidia/tritonserver:*"]
  container_names:
    description: Container names that are Triton whatever their image.
    type: list
    elements: str
    default: []
  compose_projects:
    description: When not empty, only containers of these compose projects are kept.
    type: list
    elements: str
    default: []
  http_container_port:
    description: The container port of Triton's HTTP endpoint.
    type: int
    default: 8000
  grpc_container_port:
    description: The container port of Triton's gRPC endpoint.
    type: int
    default: 8001
extends_documentation_fragment:
  - gpuserve.vllm.triton_decommission
author: gpuserve team
"""

EXAMPLES = r"""
- name: Find the Triton containers
  triton_decommission_facts:
    image_patterns: ["nvcr.io/nvidia/tritonserver:*"]
  register: __triton_decommission_found
"""

RETURN = r"""
containers:
  description: One entry per Triton container (id, name, image, image_id, running, compose,
    ports, http_ports, grpc_ports, model_repository, command, inspect).
  type: list
  elements: dict
  returned: always
compose:
  description: One entry per compose project holding Triton (project, working_dir,
    config_files, triton_services, other_services, dependents, files, and edits, the
    path/service pairs to remove from files).
  type: list
  elements: dict
  returned: always
"""

_REPO_FLAG = re.compile(r"^--model-(?:repository|store)(?:=(.+))?$")


def _docker_json(module: AnsibleModule, docker: str, args: list[str]) -> Any:
    rc, out, err = module.run_command([docker, *args])
    if rc != 0:
        module.fail_json(msg=f"{docker} {' '.join(args[:2])} failed (rc={rc}): {err.strip()}")
    return json.loads(out) if out.strip().startswith(("[", "{")) else out


def _model_repository(inspect: dict[str, Any]) -> dict[str, Any] | None:
    """The mount holding the directory given to --model-repository (default /models)."""
    argv = [*(inspect["Config"].get("Entrypoint") or []), *(inspect["Config"].get("Cmd") or [])]
    target = None
    for i, arg in enumerate(argv):
        match = _REPO_FLAG.match(arg)
        if match:
            target = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else None)
    target = os.path.normpath(target or "/models")
    best: dict[str, Any] | None = None
    for mount in inspect.get("Mounts") or []:
        dest = os.path.normpath(mount.get("Destination", ""))
        inside = target == dest or target.startswith(dest.rstrip("/") + "/")
        if inside and (best is None or len(dest) > len(best["Destination"])):
            best = mount
    if best is None:
        return None
    rel = os.path.relpath(target, os.path.normpath(best["Destination"]))
    source = os.path.normpath(os.path.join(best["Source"], rel))
    return {
        "source": source,
        "destination": target,
        "type": best.get("Type", ""),
        "read_only": not best.get("RW", True),
    }


def _ports(inspect: dict[str, Any]) -> list[dict[str, Any]]:
    ports = []
    bindings = (inspect.get("HostConfig") or {}).get("PortBindings") or {}
    for spec, binds in sorted(bindings.items()):
        number, _, proto = spec.partition("/")
        for bind in binds or []:
            if not bind.get("HostPort"):
                continue
            ports.append(
                {
                    "container_port": int(number),
                    "proto": proto or "tcp",
                    "host_ip": bind.get("HostIp") or "",
                    "host_port": int(bind["HostPort"]),
                }
            )
    return ports


def _load_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        from ruamel.yaml import YAML

        return YAML(typ="safe", pure=True).load(text)
    except ImportError:
        import yaml

        return yaml.safe_load(text)


def _depends(service: Any) -> list[str]:
    deps = service.get("depends_on") if isinstance(service, dict) else None
    if isinstance(deps, dict):
        return list(deps)
    return list(deps or [])


def _compose_summary(module: AnsibleModule, project: str, found: list[dict[str, Any]]) -> dict:
    first = found[0]["compose"]
    triton_services = sorted({c["compose"]["service"] for c in found})
    files = []
    edits = []
    others: set[str] = set()
    dependents: dict[str, list[str]] = {}
    for path in first["config_files"]:
        if not os.path.isfile(path):
            module.fail_json(
                msg=f"compose project {project}: file {path} (from the container labels) is not on "
                "this host; is compose run from another machine or a moved directory?"
            )
        data = _load_yaml(path) or {}
        services = data.get("services") or {}
        files.append(
            {
                "path": path,
                "services": sorted(services),
                "holds_triton": bool(set(services) & set(triton_services)),
            }
        )
        edits += [
            {"path": path, "service": name, "working_dir": first["working_dir"]}
            for name in triton_services
            if name in services
        ]
        for name, svc in services.items():
            if name in triton_services:
                continue
            others.add(name)
            hits = [d for d in _depends(svc) if d in triton_services]
            if hits:
                dependents[name] = hits
    return {
        "project": project,
        "working_dir": first["working_dir"],
        "config_files": first["config_files"],
        "env_file": os.path.join(first["working_dir"], ".env"),
        "triton_services": triton_services,
        "other_services": sorted(others),
        "dependents": dependents,
        "files": files,
        "edits": edits,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "image_patterns": {
                "type": "list",
                "elements": "str",
                "default": ["nvcr.io/nvidia/tritonserver:*"],
            },
            "container_names": {"type": "list", "elements": "str", "default": []},
            "compose_projects": {"type": "list", "elements": "str", "default": []},
            "http_container_port": {"type": "int", "default": 8000},
            "grpc_container_port": {"type": "int", "default": 8001},
            "docker_bin": {"type": "str", "default": "docker"},
        },
        supports_check_mode=True,
    )
    p = module.params
    docker = module.get_bin_path(p["docker_bin"], required=True)
    ids = _docker_json(module, docker, ["ps", "-a", "--no-trunc", "--format", "{{.ID}}"]).split()
    inspects = _docker_json(module, docker, ["inspect", *ids]) if ids else []
    containers = []
    for item in inspects:
        name = item["Name"].lstrip("/")
        image = item["Config"]["Image"]
        labels = item["Config"].get("Labels") or {}
        is_triton = name in p["container_names"] or any(
            fnmatch.fnmatchcase(image, pat) for pat in p["image_patterns"]
        )
        project = labels.get("com.docker.compose.project")
        if not is_triton or (p["compose_projects"] and project not in p["compose_projects"]):
            continue
        compose = None
        if project:
            files = labels.get("com.docker.compose.project.config_files", "")
            workdir = labels.get("com.docker.compose.project.working_dir", "")
            compose = {
                "project": project,
                "service": labels.get("com.docker.compose.service", ""),
                "working_dir": workdir,
                "config_files": [
                    f if os.path.isabs(f) else os.path.join(workdir, f)
                    for f in files.split(",")
                    if f
                ],
            }
        ports = _ports(item)
        containers.append(
            {
                "id": item["Id"],
                "name": name,
                "image": image,
                "image_id": item["Image"],
                "running": bool(item["State"].get("Running")),
                "status": item["State"].get("Status", ""),
                "compose": compose,
                "ports": ports,
                "http_ports": [x for x in ports if x["container_port"] == p["http_container_port"]],
                "grpc_ports": [x for x in ports if x["container_port"] == p["grpc_container_port"]],
                "model_repository": _model_repository(item),
                "inspect": item,
            }
        )
    projects: dict[str, list[dict[str, Any]]] = {}
    for c in containers:
        if c["compose"]:
            projects.setdefault(c["compose"]["project"], []).append(c)
    compose = [_compose_summary(module, name, found) for name, found in sorted(projects.items())]
    module.exit_json(changed=False, containers=containers, compose=compose)


if __name__ == "__main__":
    main()
