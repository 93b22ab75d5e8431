"""The container_images Dockerfiles keep the rules the role's README promises.

Legacy-builder syntax only (Debian's docker.io 20.10 has no BuildKit: no `RUN --mount`, no
`# syntax=`), a configurable base (`ARG BASE_IMAGE` before the first FROM), and for the runtime
images (vLLM / simulator engine, gateway): a numeric non-root USER, a HEALTHCHECK on /health
without curl, EXPOSE of the entry point's port, no compiler packages (but gcc for Triton's JIT in
the vLLM image, behind its switch); for the nginx image: the distribution's nginx packages, the
same nginx and njs packages as roles/nginx_proxy installs on a host, no default site. The
molecule scenario
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
ALL = [*RUNTIME, "build-env.Dockerfile", "nginx.Dockerfile"]
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


def _defaults() -> dict:
    return yaml.safe_load((ROOT / "roles/container_images/defaults/main.yml").read_text())


def test_nginx_image_has_every_nginx_package_of_the_nginx_proxy_role():
    # The image runs the config nginx_proxy renders (njs js_import, modules-enabled): a module
    # package the role installs on a host and the image lacks would fail that config in compose.
    proxy = yaml.safe_load((ROOT / "roles/nginx_proxy/vars/main.yml").read_text())
    wanted = [p for p in proxy["_nginx_proxy_packages"] if p.startswith(("nginx", "libnginx"))]
    assert "nginx" in wanted
    assert "libnginx-mod-http-js" in wanted
    image = _defaults()["container_images_nginx_packages"]
    assert [p for p in wanted if p not in image] == []
    # The compose health check runs curl in the container.
    assert "curl" in image


def test_nginx_image_installs_the_package_list_without_recommends_and_no_default_site():
    steps = instructions("nginx.Dockerfile")
    assert ("ARG", "NGINX_PACKAGES") in steps
    (run,) = [args for word, args in steps if word == "RUN"]
    assert "apt-get install -y --no-install-recommends ${NGINX_PACKAGES};" in run
    assert "rm -rf /var/lib/apt/lists/*;" in run
    assert "rm -f /etc/nginx/sites-enabled/default" in run
    assert ("CMD", '["nginx", "-g", "daemon off;"]') in steps
    assert not [w for w, _a in steps if w in ("HEALTHCHECK", "ENTRYPOINT", "USER")]
    (label,) = [args for word, args in steps if word == "LABEL"]
    assert 'io.gpuserve.image="nginx"' in label
    assert 'io.gpuserve.key="${GPUSERVE_KEY}"' in label
    assert 'io.gpuserve.profile="${GPUSERVE_PROFILE}"' in label


def test_nginx_image_is_built_for_the_compose_runtime_on_the_gateway_base():
    defaults = _defaults()
    assert defaults["container_images_nginx"] == (
        "{{ (gpuserve_runtime | default('systemd')) == 'compose' }}"
    )
    assert defaults["container_images_nginx_base"] == "{{ container_images_python_base }}"
    tasks = (ROOT / "roles/container_images/tasks/nginx_image.yml").read_text()
    # The tag (= key) follows the Dockerfile, the base and the package list.
    assert "lookup('ansible.builtin.file', 'nginx.Dockerfile')" in tasks
    assert "container_images_nginx_base, _packages]" in tasks
    main = (ROOT / "roles/container_images/tasks/main.yml").read_text()
    assert "file: nginx_image.yml" in main
    assert "when: container_images_nginx" in main
