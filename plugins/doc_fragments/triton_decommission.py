"""The options every triton_decommission module shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  docker_bin:
    description: The docker CLI.
    type: str
    default: docker
"""
