"""vllm_build, CPU-only source path: a real vLLM 0.11.0 sdist built once, installed twice.

The builder builds the wheel (VLLM_TARGET_DEVICE=empty); the consumer has the same cache
key and installs that wheel from the controller cache without building. A third host takes
vllm_build_install_method: wheel from a local index (FIXTURE: the sdist's sources as a
no-extension wheel, tests/fixtures/vllm_build/wheel_index.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tarfile

import pytest
import testinfra

VENV = "/opt/vllm/venv"
MANIFEST = "/opt/vllm/vllm-build-manifest.json"
WORK = "/var/lib/vllm-build"
BUILDER = "vllm_build-debian12-builder"
CONSUMER = "vllm_build-debian12-consumer"
PATCH = os.path.join(
    os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."),
    "tests/fixtures/vllm_build/patches/0001-gpuserve-fixture-marker.patch",
)
ALL = [BUILDER, CONSUMER]
WHEEL_HOST = "vllm_build-debian12-wheel"
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")
WHEEL_INDEX = "file:///srv/gpuserve-fixtures/vllm_build/wheel-index/simple"
# The vLLM 0.11.0 sdist from PyPI (sha256 pinned in tests/fixtures/vllm_build/prepare.sh).
SDIST = os.path.join(PROJECT, ".cache/vllm_build/sdist/vllm-0.11.0.tar.gz")


def _host(name: str):
    return testinfra.get_host(f"docker://{name}")


def _manifest(name: str) -> dict:
    return json.loads(_host(name).file(MANIFEST).content_string)


# One interpreter start per host (importing torch is the slow part), as the service account.
VENV_FACTS = """
import importlib.metadata as m, json, torch, vllm
from vllm import _gpuserve_fixture_patch as p
print(json.dumps({"torch": torch.__version__, "vllm": vllm.__version__,
                  "dist": m.version("vllm"), "patch": p.GPUSERVE_FIXTURE_PATCH}))
"""


@functools.cache
def _venv(name: str) -> dict:
    cmd = _host(name).run("runuser -u vllm -- %s/bin/python -c %s", VENV, VENV_FACTS)
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


@pytest.mark.parametrize("name", ALL)
def test_venv_is_owned_by_the_service_account(name):
    host = _host(name)
    assert host.user("vllm").shell == "/usr/sbin/nologin"
    python = host.file(f"{VENV}/bin/python")
    assert python.exists
    assert host.file(VENV).user == "vllm"
    assert host.file(f"{VENV}/pyvenv.cfg").contains("home = /usr/bin")


@pytest.mark.parametrize("name", ALL)
def test_torch_is_the_cpu_build_from_the_wheelhouse(name):
    assert _venv(name)["torch"] == "2.13.0+cpu"


@pytest.mark.parametrize("name", ALL)
def test_import_vllm_reports_0_11_0_with_the_empty_local_version(name):
    assert _venv(name)["vllm"] == "0.11.0"
    assert _venv(name)["dist"] == "0.11.0+empty"


@pytest.mark.parametrize("name", ALL)
def test_installed_vllm_carries_the_fixture_patch(name):
    assert _venv(name)["patch"] == "0001"


@pytest.mark.parametrize("name", ALL)
def test_manifest_records_key_versions_and_wheel(name):
    m = _manifest(name)
    assert m["key"].startswith("vllm0.11.0-torch2.13.0_cpu-cu12.8-py3.11-empty-")
    assert m["key_parts"]["torch_version"] == "2.13.0+cpu"
    assert m["key_parts"]["arch_list"] == "12.0"
    assert m["key_parts"]["python_version"] == "3.11"
    assert m["vllm"] == {"version": "0.11.0", "dist_version": "0.11.0+empty"}
    assert m["torch"]["version"] == "2.13.0+cpu"
    assert m["target_device"] == "empty"
    assert m["install_method"] == "source"
    assert m["wheel"]["file"] == "vllm-0.11.0+empty-py3-none-any.whl"
    wheel = _host(name).file(f"{WORK}/wheels/{m['key']}/{m['wheel']['file']}")
    assert wheel.sha256sum == m["wheel"]["sha256"]
    assert m["max_jobs"] >= 1
    assert m["nvcc_threads"] == 1
    assert m["build_seconds"] > 0


@pytest.mark.parametrize("name", ALL)
def test_manifest_records_the_patch_and_the_sdist(name):
    with open(PATCH, "rb") as f:
        patch_sha = hashlib.sha256(f.read()).hexdigest()
    m = _manifest(name)
    assert m["build"]["patches"] == [
        {"name": "0001-gpuserve-fixture-marker.patch", "sha256": patch_sha}
    ]
    assert m["key_parts"]["patches"] == [patch_sha]
    assert m["build"]["source"]["sha256"] == (
        "f435a64c24e9c4178d657a76f8edd8548ddc444012f7d06a9f79ac3a6392bfae"
    )


def test_fetchcontent_overrides_are_read_from_the_0_11_0_source():
    m = _manifest(BUILDER)
    assert m["build"]["fetchcontent_src_dirs_read"] == [
        "FLASH_MLA_SRC_DIR",
        "VLLM_CUTLASS_SRC_DIR",
        "VLLM_FLASH_ATTN_SRC_DIR",
    ]


def test_builder_built_the_wheel_once_with_the_build_env():
    host = _host(BUILDER)
    m = _manifest(BUILDER)
    assert m["built_on"] == BUILDER
    assert m["built_here"] is True
    assert m["installed_from"] == "built here"
    log = host.file(f"{WORK}/logs/build.log")
    assert log.is_symlink
    text = log.content_string
    # converge + idempotence ran; only the first built
    assert text.count("=== vllm_build: key ") == 1
    assert "VLLM_TARGET_DEVICE=empty TORCH_CUDA_ARCH_LIST=12.0" in text
    assert "MAX_JOBS=" in text
    assert "Created wheel for vllm: filename=vllm-0.11.0+empty-py3-none-any.whl" in text
    assert "=== vllm_build: pip wheel exited 0" in text
    assert host.file(f"{WORK}/logs/build.rc").content_string.strip() == "0"


def test_setup_py_of_the_real_sdist_no_longer_requests_flash_attention_3():
    # vllm_build_skip_unused_fa3 with TORCH_CUDA_ARCH_LIST=12.0 (no 9.x arch): the edit must
    # match 0.11.0's own setup.py, where the append spans two lines.
    m = _manifest(BUILDER)
    setup = _host(BUILDER).file(f"{WORK}/src/{m['key']}/setup.py").content_string
    assert "pass  # gpuserve vllm_build: no FA3, no 9.x arch in TORCH_CUDA_ARCH_LIST=12.0" in setup
    assert '_vllm_fa3_C"))' not in setup
    assert 'ext_modules.append(CMakeExtension(name="vllm.vllm_flash_attn._vllm_fa2_C"))' in setup
    assert m["key_parts"]["flash_attention_3"] == "skipped"
    assert m["build"]["flash_attention_3"].startswith("skipped: setup.py does not request")


def test_use_existing_torch_stripped_the_torch_pins():
    m = _manifest(BUILDER)
    build_txt = _host(BUILDER).file(f"{WORK}/src/{m['key']}/requirements/build.txt")
    assert build_txt.contains("setuptools-scm")
    assert not build_txt.contains("torch")


def test_consumer_installed_the_builders_wheel_without_building():
    host = _host(CONSUMER)
    m = _manifest(CONSUMER)
    assert m["key"] == _manifest(BUILDER)["key"]
    assert m["wheel"]["sha256"] == _manifest(BUILDER)["wheel"]["sha256"]
    assert m["built_on"] == BUILDER
    assert m["built_here"] is False
    assert m["installed_from"] == f"controller cache (built on {BUILDER})"
    assert not host.file(f"{WORK}/logs/build.log").exists
    assert host.run("ls -A %s/src", WORK).stdout.strip() == ""
    assert host.run("ls %s/build-*.sh", WORK).rc != 0


def test_build_script_sets_the_documented_build_environment():
    m = _manifest(BUILDER)
    script = _host(BUILDER).file(f"{WORK}/build-{m['key']}.sh")
    assert script.mode == 0o755
    for line in (
        "export VLLM_TARGET_DEVICE=empty",
        "export TORCH_CUDA_ARCH_LIST=12.0",
        "export CUDA_HOME=/usr/local/cuda-12.8",
        "export CMAKE_BUILD_TYPE=Release",
        f"export MAX_JOBS={m['max_jobs']}",
        "export NVCC_THREADS=1",
        "export CCACHE_DIR=/var/cache/vllm-build/ccache",
        "pip wheel --no-build-isolation --no-deps",
    ):
        assert script.contains(line), line
    assert _host(BUILDER).file("/var/cache/vllm-build/ccache").user == "vllm"


def test_airgapped_build_ran_cmake_disconnected_with_the_local_sources():
    m = _manifest(BUILDER)
    script = _host(BUILDER).file(f"{WORK}/build-{m['key']}.sh")
    for line in (
        "export VLLM_CUTLASS_SRC_DIR=/srv/gpuserve-fixtures/vllm_build/fetchcontent/cutlass",
        "export FLASH_MLA_SRC_DIR=/srv/gpuserve-fixtures/vllm_build/fetchcontent/flashmla",
        'export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DFETCHCONTENT_FULLY_DISCONNECTED=ON"',
    ):
        assert script.contains(line), line
    # The environment the build really ran with (the script echoes it into the log).
    log = _host(BUILDER).file(f"{WORK}/logs/build.log").content_string
    assert "CMAKE_ARGS=-DFETCHCONTENT_FULLY_DISCONNECTED=ON" in log
    assert m["build"]["airgapped"] is True
    assert m["build"]["fetchcontent_fully_disconnected"] is True
    assert set(m["build"]["fetchcontent_src_dirs_given"]) == set(
        m["build"]["fetchcontent_src_dirs_read"]
    )


def test_builder_installed_torch_and_consumer_reads_the_hosts_torch():
    assert _manifest(BUILDER)["torch"]["source"] == "install"
    assert _manifest(BUILDER)["torch"]["site"] is None
    m = _manifest(CONSUMER)
    site = "/opt/torch/site"
    assert m["torch"]["source"] == "existing"
    assert m["torch"]["site"] == site
    host = _host(CONSUMER)
    pth = host.file(f"{VENV}/lib/python3.11/site-packages/_gpuserve_existing_torch.pth")
    assert pth.content_string.strip() == site
    # torch imports from the host's venv, and the role installed no torch into its own.
    cmd = host.run(
        "runuser -u vllm -- %s/bin/python -c %s",
        VENV,
        "import torch; print(torch.__file__)",
    )
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == f"{site}/torch/__init__.py"
    assert not host.file(f"{VENV}/lib/python3.11/site-packages/torch").exists


# --- vllm_build_install_method: wheel ------------------------------------------------------------
def test_wheel_host_installed_vllm_0_11_0_from_the_index():
    host = _host(WHEEL_HOST)
    code = "import importlib.metadata as m, vllm; print(m.version('vllm'), vllm.__version__)"
    cmd = host.run("runuser -u vllm -- %s/bin/python -c %s", VENV, code)
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.split() == ["0.11.0+empty", "0.11.0"]
    installer = host.file(
        f"{VENV}/lib/python3.11/site-packages/vllm-0.11.0+empty.dist-info/INSTALLER"
    )
    assert installer.content_string.strip() == "pip"


def test_wheel_host_files_are_the_0_11_0_sdist_s():
    # Files the wheel carries, compared with the same files of PyPI's sdist (sha256-pinned).
    names = ["vllm/__init__.py", "vllm/_version.py", "vllm/engine/arg_utils.py"]
    with tarfile.open(SDIST) as sdist:
        expected = {
            n: hashlib.sha256(sdist.extractfile(f"vllm-0.11.0/{n}").read()).hexdigest()
            for n in names
        }
    site = f"{VENV}/lib/python3.11/site-packages"
    host = _host(WHEEL_HOST)
    assert {n: host.file(f"{site}/{n}").sha256sum for n in names} == expected


def test_wheel_host_manifest_says_index_and_nothing_was_built():
    m = _manifest(WHEEL_HOST)
    assert m["install_method"] == "wheel"
    assert m["installed_from"] == f"index:{WHEEL_INDEX}"
    assert m["vllm"] == {"version": "0.11.0", "dist_version": "0.11.0+empty"}
    assert m["torch"]["source"] == "existing"
    assert m["key_parts"]["vllm_ref"] == f"wheel:{WHEEL_INDEX}@0.11.0"
    assert m["wheel"] is None
    assert m["built_on"] is None
    host = _host(WHEEL_HOST)
    # No source tree, build script or build log of its key (the work folders exist, empty).
    assert not host.file(f"{WORK}/src/{m['key']}").exists
    assert not host.file(f"{WORK}/build-{m['key']}.sh").exists
    assert not host.file(f"{WORK}/logs/build.log").exists
    # --no-deps (vllm_build_install_deps: false): none of vLLM's runtime dependencies came.
    assert not host.file(f"{VENV}/lib/python3.11/site-packages/transformers").exists
