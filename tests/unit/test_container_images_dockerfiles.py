"""The container_images Dockerfiles keep the rules the role's README promises.

Legacy-builder syntax only (Debian's docker.io 20.10 has no BuildKit: no `RUN --mount`, no
`# syntax=`), a configurable base (`ARG BASE_IMAGE` before the first FROM), and for the runtime
images (vLLM / simulator engine, gateway): a numeric non-root USER, a HEALTHCHECK on /health
without curl, EXPOSE of the entry point's port, no compiler packages (but gcc for Triton's JIT in
the vLLM image, behind its switch). The molecule scenario
checks the built images; these catch a broken Dockerfile before any build.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "roles/container_images/files"
RUNTIME = ["engine.Dockerfile", "gateway.Dockerfile"]
ALL = [*RUNTIME, "build-env.Dockerfile"]
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cpp|python3-dev|cuda-nvcc\S*)\b")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (FILES / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ALL)
def test_base_image_is_a_build_arg_declared_before_the_first_from(name):
    steps = instructions(name)
    assert steps[0] == ("ARG", "BASE_IMAGE")
    assert steps[1][0] == "FROM"
    assert steps[1][1].startswith("${BASE_IMAGE}")


@pytest.mark.parametrize("name", ALL)
def test_only_legacy_builder_syntax(name):
    assert not (FILES / name).read_text().startswith("# syntax=")
    for _word, args in instructions(name):
        assert "--mount" not in args
        assert "<<" not in args  # heredocs need BuildKit


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_image_installs_no_compiler_but_the_vllm_jit_gcc(name):
    for word, args in instructions(name):
        if word != "RUN":
            continue
        if "${JIT_COMPILER}" in args:
            # Only behind the switch, and only gcc + libc headers (Triton's JIT launcher).
            assert name == "engine.Dockerfile"
            assert 'if [ "${JIT_COMPILER}" = true ]' in args
            assert "install -y --no-install-recommends gcc libc6-dev;" in args
            args = args.replace("gcc libc6-dev", "")
        assert not COMPILERS.search(args), COMPILERS.search(args)


def test_vllm_image_switches_the_jit_compiler_on_and_the_simulator_does_not():
    tasks = (ROOT / "roles/container_images/tasks/vllm_image.yml").read_text()
    assert 'JIT_COMPILER: "{{ container_images_vllm_jit_compiler | bool | lower }}"' in tasks
    assert (
        "JIT_COMPILER" not in (ROOT / "roles/container_images/tasks/package_image.yml").read_text()
    )
    assert ("ARG", "JIT_COMPILER=false") in instructions("engine.Dockerfile")


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_image_ends_as_a_numeric_non_root_user(name):
    users = [args for word, args in instructions(name) if word == "USER"]
    assert users[-1] == "10001:10001"


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_image_checks_slash_health_with_python_on_the_exposed_port(name):
    steps = instructions(name)
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/opt/gpuserve/venv/bin/python" in check
    assert "urllib.request" in check
    assert "/health" in check
    assert "curl" not in check
    assert ("EXPOSE", "8000") in steps
    assert any(w == "ENV" and "GPUSERVE_PORT=8000" in a for w, a in steps)
    assert ("ENTRYPOINT", '["/usr/local/bin/gpuserve-entrypoint"]') in steps


def test_engine_and_simulator_share_the_engine_dockerfile():
    tasks = (ROOT / "roles/container_images/tasks/package_image.yml").read_text()
    assert "'gateway.Dockerfile' if _gateway else 'engine.Dockerfile'" in tasks
    assert (
        "dockerfile: engine.Dockerfile"
        in (ROOT / "roles/container_images/tasks/vllm_image.yml").read_text()
    )


def test_entrypoint_knows_every_runtime_image():
    script = (FILES / "gpuserve-entrypoint.sh").read_text()
    for image in ("vllm)", "simulator)", "gateway)"):
        assert image in script
    assert 'exec vllm serve "$GPUSERVE_MODEL" --host 0.0.0.0 --port "$port"' in script


def test_default_cuda_bases_follow_the_version_matrix():
    defaults = yaml.safe_load((ROOT / "roles/container_images/defaults/main.yml").read_text())
    assert "gpuserve_matrix.cuda_package_version" in defaults["container_images_cuda_image_version"]
    assert defaults["container_images_runtime_base"].endswith(
        "/nvidia/cuda:{{ container_images_cuda_image_version }}-runtime-ubuntu24.04"
    )
    assert defaults["container_images_devel_base"].endswith(
        "/nvidia/cuda:{{ container_images_cuda_image_version }}-devel-ubuntu24.04"
    )
    assert defaults["container_images_registry"] == "docker.io"
