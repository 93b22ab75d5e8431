"""Unit tests of the nvidia_repo test fixture's helpers (tests/fixtures/nvidia_repo/aptrepo.py)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_repo"))

import aptrepo


def test_control_has_the_fields_dpkg_needs():
    pkg = aptrepo.FixturePackage(name="libnccl2", version="2.26.5-1+cuda12.9", depends="libc6")
    text = aptrepo.control_text(pkg, 413000)
    assert text.startswith("Package: libnccl2\nVersion: 2.26.5-1+cuda12.9\nArchitecture: amd64\n")
    assert "Installed-Size: 413000\n" in text
    assert "Depends: libc6\n" in text
    assert text.endswith("Description: gpuserve test fixture package\n")


def test_filename_drops_the_epoch():
    assert aptrepo.FixturePackage(name="x", version="1:2.0-1").filename == "x_2.0-1_amd64.deb"


def test_release_lists_sha256_of_each_index():
    data = b"Package: x\n"
    release = aptrepo.release_text("NVIDIA", "NVIDIA CUDA", "debian12", {"Packages": data})
    assert "Origin: NVIDIA\nLabel: NVIDIA CUDA\n" in release
    assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} Packages" in release


def test_packages_stanza_points_into_the_flat_repo():
    stanza = aptrepo.packages_stanza("Package: x\nVersion: 1\n", "x_1_amd64.deb", 10, "ab", "cd")
    assert (
        stanza
        == "Package: x\nVersion: 1\nFilename: ./x_1_amd64.deb\nSize: 10\nMD5sum: cd\nSHA256: ab\n"
    )


def test_sources_line_is_the_one_nvidia_keyring_ships():
    line = aptrepo.sources_line("/usr/share/keyrings/k.gpg", "file:///srv/r/cuda/", "debian12")
    assert (
        line == "deb [signed-by=/usr/share/keyrings/k.gpg] file:///srv/r/cuda/debian12/x86_64/ /\n"
    )
