"""nvidia_driver_source: ubuntu_archive against the ubuntu_archive test fixture.

The fixture (tests/fixtures/ubuntu_archive/build.py) carries Ubuntu 24.04's package names and
relationships, metadata only: these tests check what apt installed, at which versions, what it
did NOT install (no DKMS on the signed-modules path) and the version pin; nvidia-smi and a
loaded module cannot be tested in a container. The host is Debian 13 with Ubuntu's facts given
by converge.yml.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
FIXTURE = json.loads((PROJECT / ".cache/ubuntu_archive/repo/fixture.json").read_text())
BRANCH = FIXTURE["driver_branch"]
OLDER, NEWEST = FIXTURE["driver_versions"]
ABI, KVER, FLAVOUR = FIXTURE["kernel_abi"], FIXTURE["kernel_version"], FIXTURE["kernel_flavour"]
LINE = f"{BRANCH}-server"
PIN = "/etc/apt/preferences.d/gpuserve-nvidia-driver"


def version(host, package: str) -> str:
    out = host.run(f"dpkg-query -W -f '${{db:Status-Abbrev}}|${{Version}}' {package}")
    assert out.rc == 0, f"{package} is not known to dpkg: {out.stderr}"
    status, ver = out.stdout.split("|")
    assert status.strip() == "ii", f"{package}: dpkg status {status!r}"
    return ver


@pytest.mark.parametrize(
    "package",
    [
        f"nvidia-headless-no-dkms-{LINE}-open",  # what the role asks for (the version package)
        f"nvidia-utils-{LINE}",
        # pulled by the relationships, at the same build
        f"nvidia-kernel-common-{LINE}",
        f"nvidia-kernel-source-{LINE}-open",
        f"nvidia-compute-utils-{LINE}",
        f"libnvidia-compute-{LINE}",
        f"libnvidia-cfg1-{LINE}",
    ],
)
def test_driver_userspace_is_the_newest_build_of_the_branch(host, package):
    assert version(host, package) == NEWEST


@pytest.mark.parametrize(
    "package",
    [
        f"linux-modules-nvidia-{LINE}-open-{ABI}",  # the running kernel's signed modules
        f"linux-modules-nvidia-{LINE}-open-{FLAVOUR}",  # follows the flavour's kernel updates
        f"linux-objects-nvidia-{LINE}-open-{ABI}",
        f"linux-signatures-nvidia-{ABI}",
    ],
)
def test_signed_modules_of_the_running_kernel_and_its_flavour_are_installed(host, package):
    assert version(host, package) == KVER


@pytest.mark.parametrize(
    "package", [f"nvidia-dkms-{LINE}-open", f"nvidia-headless-{LINE}-open", "dkms"]
)
def test_nothing_builds_a_module_on_the_signed_path(host, package):
    assert not host.package(package).is_installed


def version_priorities(host, package: str) -> dict[str, int]:
    """{version: pin priority} from `apt-cache policy`'s version table."""
    table = host.check_output(f"apt-cache policy {package}").split("Version table:", 1)[1]
    rows = [line.replace("***", "").split() for line in table.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and not r[0].isdigit()}


def test_pin_holds_the_chosen_build_and_not_the_older_one(host):
    pin = host.file(PIN).content_string
    assert f"Pin: version {NEWEST.split('-')[0]}-*" in pin
    assert "Pin-Priority: 1001" in pin
    for package in (f"nvidia-headless-no-dkms-{LINE}-open", f"nvidia-kernel-common-{LINE}"):
        assert version_priorities(host, package) == {NEWEST: 1001, OLDER: 500}


def test_nvidia_persistenced_from_compute_utils_is_enabled(host):
    assert host.file("/usr/lib/systemd/system/nvidia-persistenced.service").exists
    assert host.service("nvidia-persistenced").is_enabled
