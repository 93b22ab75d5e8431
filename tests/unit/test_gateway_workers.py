"""The gateway_workers filter, and the gateway role's default that uses it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "gateway"
spec = importlib.util.spec_from_file_location(
    "gateway_workers_filter", ROOT / "plugins/filter/gateway_workers.py"
)
assert spec
assert spec.loader
gw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gw)


@pytest.mark.parametrize(
    ("cores", "peak", "rate", "expected"),
    [
        (16, 50_000, 20_000, 5),  # ceil(50,000 / (20,000 * 0.5))
        (128, 50_000, 20_000, 5),  # more cores do not add workers the stream does not need
        (4, 50_000, 20_000, 2),  # half the cores, and never fewer than 2
        (1, 50_000, 20_000, 2),  # reloads without dropped connections need 2
        (16, 0, 20_000, 2),
        (16, 10_000, 20_000, 2),
        (8, 200_000, 20_000, 4),  # capped at half the cores: the rest is vLLM's
        (256, 10_000_000, 20_000, 64),  # the config's maximum
    ],
)
def test_workers_from_cores_and_rate(cores: int, peak: int, rate: int, expected: int) -> None:
    assert gw.gateway_workers(cores, peak, rate) == expected


def test_utilization_and_minimum() -> None:
    assert gw.gateway_workers(32, 60_000, 20_000, utilization=1.0) == 3
    assert gw.gateway_workers(32, 60_000, 20_000, utilization=0.25) == 12
    assert gw.gateway_workers(32, 0, 20_000, minimum=1) == 1
    assert gw.gateway_workers(2, 0, 20_000, minimum=3) == 3


def test_strings_from_templates_are_numbers() -> None:
    assert gw.gateway_workers("16", "50000", "20000") == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 1, 1), {}, "cores must be at least 1"),
        ((4, -1, 1), {}, "peak_tokens_per_s must be at least 0"),
        ((4, 1, 0), {}, "chunks_per_core_s must be at least 1"),
        ((4, 1, 1), {"utilization": 0}, "utilization must be in"),
        ((4, 1, 1), {"utilization": 1.5}, "utilization must be in"),
        ((4, 1, 1), {"minimum": 65}, "minimum must be at most 64"),
        ((True, 1, 1), {}, "cores must be an integer"),
        (("many", 1, 1), {}, "cores must be an integer"),
    ],
)
def test_refuses_values_that_size_nothing(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gw.gateway_workers(*args, **kwargs)


def _role_default(facts: dict[str, Any], **overrides: Any) -> int:
    loader = DataLoader()
    variables: dict[str, Any] = dict(
        loader.load_from_file(str(ROLE / "defaults" / "main.yml"), trusted_as_template=True)
    )
    variables.update(ansible_facts=facts, **overrides)
    out = Templar(loader=loader, variables=variables).template(
        trust_as_template("{{ gateway_workers }}")
    )
    return int(out)


def test_role_default_uses_the_hosts_cores() -> None:
    # ceil(50,000 / (11,000 * 0.5)) = 10, at most half the cores
    assert _role_default({"processor_vcpus": 16}) == 8
    assert _role_default({"processor_vcpus": 4}) == 2
    assert _role_default({"processor_nproc": 64}) == 10
    assert _role_default({"processor_vcpus": 64}, gateway_peak_tokens_per_s=200_000) == 32


def test_role_default_without_facts() -> None:
    assert _role_default({}) == 2
