"""The shared systemd hardening filter, and the units that use it.

The units are rendered by the roles' own templates elsewhere (molecule: `systemctl show`,
`systemd-analyze security`); here: the filter's rules, and that every unit template of the
collection takes its hardening from the filter, so no unit carries a copy that can drift.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "systemd_hardening_filter", ROOT / "plugins/filter/systemd_hardening.py"
)
assert spec
assert spec.loader
sh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sh)

# The long-running services gpuserve writes units or drop-ins for (the oneshot device unit has no
# hardening: it runs as root to load kernel modules).
HARDENED_UNITS = [
    "roles/gateway/templates/gpuserve-gateway.service.j2",
    "roles/vllm_service/templates/vllm@.service.j2",
    "roles/monitoring/templates/gpuserve-nvml-exporter.service.j2",
    # Drop-ins for the distribution's units these roles configure.
    "roles/nginx_proxy/templates/nginx-hardening.conf.j2",
    "roles/monitoring/templates/prometheus-node-exporter-hardening.conf.j2",
]


def lines(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines()]  # type: ignore[misc]


def test_no_differences_gives_the_shared_directives_in_order() -> None:
    assert lines(sh.systemd_hardening({})) == list(sh.SHARED)
    assert sh.systemd_hardening(None) == sh.systemd_hardening({})


def test_a_string_replaces_the_shared_value_in_place() -> None:
    out = lines(sh.systemd_hardening({"IPAddressAllow": "localhost 10.0.0.0/8"}))
    assert len(out) == len(sh.SHARED)
    assert dict(out)["IPAddressAllow"] == "localhost 10.0.0.0/8"
    assert [k for k, _ in out] == [k for k, _ in sh.SHARED]


def test_none_leaves_a_directive_out_and_a_list_repeats_it() -> None:
    out = sh.systemd_hardening(
        {"DevicePolicy": None, "SystemCallFilter": ["@system-service", "~@privileged"]}
    )
    assert "DevicePolicy=" not in out
    assert re.findall(r"^SystemCallFilter=.*$", out, re.M) == [
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
    ]


def test_new_directives_follow_the_shared_ones_in_the_order_given() -> None:
    out = lines(sh.systemd_hardening({"ReadWritePaths": "/x", "DeviceAllow": ["a rw", "b rw"]}))
    added = [("ReadWritePaths", "/x"), ("DeviceAllow", "a rw"), ("DeviceAllow", "b rw")]
    assert out[len(sh.SHARED) :] == added


@pytest.mark.parametrize(
    "differences",
    [
        {"protectHome": "yes"},
        {"Protect Home": "yes"},
        {"ProtectHome": "yes\nUser=root"},
        {"DeviceAllow": [3]},
    ],
)
def test_bad_input_is_refused_with_the_name(differences: dict) -> None:
    with pytest.raises(ValueError, match="systemd_hardening"):
        sh.systemd_hardening(differences)


@pytest.mark.parametrize("template", HARDENED_UNITS)
def test_unit_template_takes_its_hardening_from_the_filter(template: str) -> None:
    text = (ROOT / template).read_text()
    assert "| gpuserve.vllm.systemd_hardening }}" in text
    # No shared directive is written out by hand beside the filter's output.
    own = {m.group(1) for m in re.finditer(r"^([A-Z][A-Za-z]+)=", text, re.M)}
    assert own.isdisjoint(name for name, _ in sh.SHARED), own & {n for n, _ in sh.SHARED}
