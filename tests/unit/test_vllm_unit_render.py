"""vllm_service's unit templates rendered by Ansible's own templating, with the role's defaults
and vars: the real-engine branch (which CI never starts; docs/gpu-validation.md shows it on a
GPU) and the simulator branch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "vllm_service"
# The unit template calls gpuserve.vllm.systemd_hardening: conftest.py loads the checkout as
# the collection.


def render(engine: str, **overrides: Any) -> tuple[str, str]:
    """(instance drop-in, template unit) for the first model entry."""
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for part in ("defaults/main.yml", "vars/main.yml"):
        variables.update(loader.load_from_file(str(ROLE / part), trusted_as_template=True))
    variables.update(
        inventory_hostname="gpu1",
        ansible_managed="Ansible managed",
        ansible_facts={"systemd": {"version": "257"}},
        vllm_service_engine=engine,
        **overrides,
    )
    instance = Templar(loader=loader, variables=variables).template(
        trust_as_template("{{ _vllm_service_instances }}")
    )[0]
    templar = Templar(loader=loader, variables=variables | {"_vllm_service_instance": instance})
    return tuple(  # type: ignore[return-value]
        templar.template(trust_as_template((ROLE / "templates" / name).read_text()))
        for name in ("instance.conf.j2", "vllm@.service.j2")
    )


def test_real_engine_store_on_loopback_and_gpu_devices_allowed() -> None:
    # vLLM's torch.distributed store listens on the host's primary address unless
    # VLLM_HOST_IP says otherwise; IPAddressAllow= (loopback) would block it (seen on the GPU).
    dropin, unit = render("vllm")
    assert "Environment=VLLM_HOST_IP=127.0.0.1" in dropin.splitlines()
    lines = unit.splitlines()
    assert "IPAddressDeny=any" in lines
    assert "DeviceAllow=char-nvidia-uvm rw" in lines
    assert "DeviceAllow=char-nvidiactl rw" in lines
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" in lines
    assert "MemoryDenyWriteExecute=yes" not in lines  # CUDA/Triton JIT needs W+X pages
    assert "Requires=gpuserve-nvidia-devices.service" in lines


def test_an_entry_env_overrides_the_engine_default() -> None:
    models = [
        {"name": "m", "source": {"type": "local", "path": "/models/m"}, "revision": "v1"}
        | {"env": {"VLLM_HOST_IP": "10.0.0.5"}}
    ]
    dropin, _ = render("vllm", vllm_service_models=models)
    assert "Environment=VLLM_HOST_IP=10.0.0.5" in dropin.splitlines()
    assert "Environment=VLLM_HOST_IP=127.0.0.1" not in dropin.splitlines()


@pytest.mark.parametrize("directive", ["MemoryDenyWriteExecute=yes", "PrivateDevices=yes"])
def test_simulator_keeps_the_strict_branch(directive: str) -> None:
    dropin, unit = render("simulator")
    assert directive in unit.splitlines()
    assert "VLLM_HOST_IP" not in dropin
    assert "DeviceAllow=" not in unit
