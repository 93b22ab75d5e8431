"""Load this checkout as the gpuserve.vllm collection before any test module imports it, as
ansible-playbook does through ansible.cfg: templates rendered here call the collection's
filters by FQCN (gpuserve.vllm.systemd_hardening), which only Ansible's collection loader
resolves, and it must be installed before `ansible_collections` is first imported."""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.loader import init_plugin_loader

init_plugin_loader([str(Path(__file__).resolve().parents[2] / "collections")])
