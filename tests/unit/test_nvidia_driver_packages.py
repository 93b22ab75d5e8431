"""The nvidia_driver role's package choice, against the distributions' real package names.

The expected names are written out here as read from outside the project (2026-12-01):
- canonical/ubuntu-drivers-common (what `ubuntu-drivers install --gpgpu` installs):
  UbuntuDrivers/detect.py get_linux_modules_metapackage() builds
  "linux-modules-nvidia-<driver flavour>-<kernel flavour>" (driver flavour 560-server-open,
  kernel flavour from the installed linux-image-<flavour> meta package, e.g.
  generic-hwe-20.04) and checks "linux-modules-nvidia-<driver flavour>-<uname -r>" exists;
  _get_headless_no_dkms_metapackage() gives "nvidia-headless-no-dkms-<driver flavour>".
  tests/test_ubuntu_drivers.py expects for a gpgpu install of 560-server-open:
  linux-modules-nvidia-560-server-open-generic-hwe-20.04 (Depends:
  linux-modules-nvidia-560-server-open-5.4.0-25-generic) and
  nvidia-headless-no-dkms-560-server-open.
- UbuntuDrivers/kerneldetection.py: the flavour is the linux-image-* meta package that
  depends on the newest installed kernel image; `uname -r` alone ends in -generic for GA and
  HWE kernels alike.
- `dpkg -l` of an Ubuntu 24.04.3 host with the 580 open driver from the archive (quoted in a
  public setup note): linux-modules-nvidia-580-open-6.14.0-37-generic "Linux kernel nvidia
  modules for version 6.14.0-37", linux-modules-nvidia-580-open-generic-hwe-24.04 "Extra
  drivers for nvidia-580-open for the generic-hwe-24.04 flavour", nvidia-utils-580.
- NVIDIA's CUDA repository (field brief): cuda-drivers-<branch> up to 580, then
  nvidia-driver-pinning-<branch> + nvidia-open; nvidia-dkms-<branch>-open on Ubuntu,
  nvidia-kernel-open-dkms on Debian.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "filter" / "nvidia_driver.py"
spec = importlib.util.spec_from_file_location("nvidia_driver_filters", PLUGIN)
assert spec is not None
assert spec.loader is not None
nd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nd)

UBUNTU_2404_GA = ["linux-image-generic", "linux-generic", "linux-image-6.8.0-51-generic"]
UBUNTU_2404_HWE = [
    "linux-image-generic-hwe-24.04",
    "linux-generic-hwe-24.04",
    "linux-image-6.14.0-37-generic",
]
UBUNTU_2404_LOWLATENCY = [
    "linux-image-lowlatency",
    "linux-lowlatency",
    "linux-image-6.8.0-51-lowlatency",
]


def plan(**overrides: Any) -> dict[str, Any]:
    spec_: dict[str, Any] = {
        "source": "ubuntu_archive",
        "branch": 580,
        "distribution": "Ubuntu",
        "kernel": "6.8.0-51-generic",
        "installed": UBUNTU_2404_GA,
        "headless": True,
        "signed": True,
        "kernel_flavours": [],
        "packages": [],
    }
    spec_.update(overrides)
    return nd.package_plan(spec_)


def no_dkms(packages: list[str]) -> bool:
    return not any("dkms" in p.replace("no-dkms", "") for p in packages)


def test_secure_boot_host_with_an_hwe_kernel_gets_the_hwe_signed_modules() -> None:
    # uname -r of an HWE kernel ends in -generic, like a GA kernel: the meta package decides.
    p = plan(kernel="6.14.0-37-generic", installed=UBUNTU_2404_HWE)
    assert p["packages"] == [
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
        "linux-modules-nvidia-580-server-open-6.14.0-37-generic",
        "linux-modules-nvidia-580-server-open-generic-hwe-24.04",
    ]
    assert p["uses_dkms"] is False
    assert p["version_package"] == "nvidia-headless-no-dkms-580-server-open"
    assert no_dkms(p["packages"])


def test_lowlatency_kernel_gets_the_lowlatency_signed_modules() -> None:
    p = plan(kernel="6.8.0-51-lowlatency", installed=UBUNTU_2404_LOWLATENCY)
    assert p["kernel_flavours"] == ["lowlatency"]
    assert "linux-modules-nvidia-580-server-open-lowlatency" in p["packages"]
    assert "linux-modules-nvidia-580-server-open-6.8.0-51-lowlatency" in p["packages"]
    assert not any(x.endswith("-generic") for x in p["packages"])


def test_ga_kernel_gets_the_generic_signed_modules() -> None:
    p = plan()
    assert p["kernel_flavours"] == ["generic"]
    assert p["packages"][-2:] == [
        "linux-modules-nvidia-580-server-open-6.8.0-51-generic",
        "linux-modules-nvidia-580-server-open-generic",
    ]


def test_regular_line_signed_uses_the_open_not_server_open_names() -> None:
    # Names as in the dpkg listing above: linux-modules-nvidia-580-open-<...>, nvidia-utils-580.
    p = plan(headless=False, kernel="6.14.0-37-generic", installed=UBUNTU_2404_HWE)
    assert p["packages"] == [
        "nvidia-headless-no-dkms-580-open",
        "nvidia-utils-580",
        "linux-modules-nvidia-580-open-6.14.0-37-generic",
        "linux-modules-nvidia-580-open-generic-hwe-24.04",
    ]
    assert no_dkms(p["packages"])


def test_both_ga_and_hwe_meta_installed_get_both_flavours() -> None:
    p = plan(kernel="6.14.0-37-generic", installed=UBUNTU_2404_GA + UBUNTU_2404_HWE)
    assert p["kernel_flavours"] == ["generic", "generic-hwe-24.04"]


def test_kernel_without_its_meta_package_gets_only_its_own_modules() -> None:
    p = plan(kernel="6.8.0-51-generic", installed=["linux-image-6.8.0-51-generic"])
    assert p["kernel_flavours"] == []
    assert [x for x in p["packages"] if x.startswith("linux-modules")] == [
        "linux-modules-nvidia-580-server-open-6.8.0-51-generic"
    ]


def test_explicit_kernel_flavours_win() -> None:
    p = plan(kernel_flavours=["generic-hwe-24.04"])
    assert "linux-modules-nvidia-580-server-open-generic-hwe-24.04" in p["packages"]


def test_a_custom_kernel_has_no_ubuntu_flavour() -> None:
    assert nd.kernel_flavours("6.12.1-custom", UBUNTU_2404_GA) == []
    assert nd.kernel_flavours("6.8.0-51-generic", ["linux-image-generic-64k"]) == []


@pytest.mark.parametrize(
    ("overrides", "packages", "version_package"),
    [
        (
            {"signed": False},
            ["nvidia-headless-580-server-open", "nvidia-utils-580-server"],
            "nvidia-headless-580-server-open",
        ),
        (
            {"signed": False, "headless": False},
            ["nvidia-driver-580-open"],
            "nvidia-driver-580-open",
        ),
        ({"source": "cuda_repo"}, ["nvidia-dkms-580-open", "cuda-drivers-580"], "cuda-drivers-580"),
        (
            {"source": "cuda_repo", "distribution": "Debian"},
            ["nvidia-kernel-open-dkms", "cuda-drivers-580"],
            "cuda-drivers-580",
        ),
        ({"source": "cuda_repo", "branch": 590}, ["nvidia-open"], "nvidia-open"),
    ],
)
def test_dkms_paths(overrides: dict[str, Any], packages: list[str], version_package: str) -> None:
    p = plan(**overrides)
    assert p["packages"] == packages
    assert p["version_package"] == version_package
    assert p["uses_dkms"] is True


def test_ubuntu_archive_on_debian_is_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="nvidia_driver_source=ubuntu_archive"):
        plan(distribution="Debian")
