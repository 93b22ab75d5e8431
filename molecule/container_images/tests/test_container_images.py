"""container_images on Debian 13, built by the test machine's Docker (socket mounted in the host).

Images on the LOCAL fixture base (tests/fixtures/container_images/build_base.sh): the vLLM image
from the FIXTURE wheel of two FIXTURE builds (converge: the first key; side_effect.yml: a second
key), the TEST/DEMO simulator engine image and the gateway image. The checks read the daemon
directly (the same daemon the host's docker CLI talks to) and the record on the host.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
HOST = "container_images-debian13"
RECORD = "/etc/gpuserve/images.json"
MANIFEST = "/opt/vllm/vllm-build-manifest.json"
NAMES = {
    "vllm": "gpuserve-ci-img/vllm",
    "simulator": "gpuserve-ci-img/engine-simulator",
    "gateway": "gpuserve-ci-img/gateway",
}
RUNTIME = list(NAMES)
# The compose runtime's nginx image (the distribution's nginx + njs): not a gpuserve runtime
# image (no venv, user, health check or entry point of its own).
NGINX = "gpuserve-ci-img/nginx"

_spec = importlib.util.spec_from_file_location("check_mode", ROOT / "molecule/shared/check_mode.py")
check_mode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_mode)


def _host():
    return testinfra.get_host(f"docker://{HOST}")


def docker(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    run = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert run.returncode == 0, f"docker {' '.join(args)}: {run.stderr}"
    return run


@functools.cache
def record() -> dict:
    return json.loads(_host().file(RECORD).content_string)


@functools.cache
def manifest() -> dict:
    return json.loads(_host().file(MANIFEST).content_string)


def inspect(ref: str) -> dict:
    return json.loads(docker("image", "inspect", ref).stdout)[0]


def ref(image: str) -> str:
    return record()["images"][image]["ref"]


def test_record_names_every_image_with_its_tag_and_key():
    images = record()["images"]
    assert sorted(images) == ["gateway", "nginx", "simulator", "vllm"]
    for image, name in {**NAMES, "nginx": NGINX}.items():
        assert images[image]["name"] == name
        assert images[image]["ref"] == f"{name}:{images[image]['tag']}"
    assert record()["profile"] == "blackwell-cuda12.8"


def test_vllm_image_tag_is_the_current_build_key():
    key = manifest()["key"]
    assert key.startswith("vllm0.11.0-torch2.13.0_cpu-cu12.8-py3.13-empty-")
    assert record()["images"]["vllm"]["tag"] == key
    assert record()["images"]["vllm"]["key"] == key


def test_package_image_tags_carry_the_package_version_and_a_content_hash():
    for image in ("gateway", "simulator"):
        version, digest = record()["images"][image]["tag"].rsplit("-", 1)
        assert version == "0.1.0"
        assert re.fullmatch("[0-9a-f]{12}", digest), digest


@pytest.mark.parametrize("image", [*RUNTIME, "nginx"])
def test_image_exists_with_the_labels_of_its_key(image):
    labels = inspect(ref(image))["Config"]["Labels"]
    assert labels["io.gpuserve.image"] == image
    assert labels["io.gpuserve.key"] == record()["images"][image]["key"]
    assert labels["io.gpuserve.profile"] == "blackwell-cuda12.8"
    assert labels["io.gpuserve.recipe"] == record()["images"][image]["recipe"]


def test_nginx_image_tag_is_its_key_a_content_hash():
    image = record()["images"]["nginx"]
    assert re.fullmatch("[0-9a-f]{12}", image["tag"]), image["tag"]
    assert image["key"] == image["tag"]
    assert inspect(ref("nginx"))["Config"]["Labels"]["io.gpuserve.key"] == image["tag"]


def nginx_sh(script: str, *mounts: str) -> subprocess.CompletedProcess:
    """A shell script in a throwaway container of the nginx image (stderr folded into stdout)."""
    volumes = [arg for m in mounts for arg in ("-v", m)]
    return docker("run", "--rm", *volumes, ref("nginx"), "/bin/sh", "-c", f"exec 2>&1; {script}")


def test_nginx_image_has_the_distribution_nginx_and_its_njs_module_enabled():
    out = nginx_sh("nginx -V").stdout
    assert out.startswith("nginx version: nginx/"), out
    # Debian's packaging (what nginx_proxy's config expects): its paths and modules-enabled.
    assert "--conf-path=/etc/nginx/nginx.conf" in out
    assert "--modules-path=/usr/lib/nginx/modules" in out
    nginx_sh("test -f /usr/lib/nginx/modules/ngx_http_js_module.so")
    enabled = nginx_sh("cat /etc/nginx/modules-enabled/*.conf").stdout
    assert re.search(r"^load_module\s+modules/ngx_http_js_module\.so;", enabled, re.M), enabled
    assert (
        "include /etc/nginx/modules-enabled/*.conf;" in nginx_sh("cat /etc/nginx/nginx.conf").stdout
    )


def test_nginx_image_has_curl_for_the_compose_health_check():
    assert nginx_sh("curl --version").stdout.startswith("curl ")


def test_nginx_image_has_no_default_site():
    out = nginx_sh(
        "ls -A /etc/nginx/sites-enabled/; test ! -e /etc/nginx/sites-enabled/default && echo absent"
    )
    assert out.stdout.split() == ["absent"], out.stdout


def test_nginx_image_passes_nginx_t_with_its_stock_config():
    out = nginx_sh("nginx -t").stdout
    assert "test is successful" in out, out


# The directives of roles/nginx_proxy's nginx.conf that need the Debian packaging and njs: user
# www-data, modules-enabled, mime.types, the njs response_end script and its filters.
NJS_CONFIG = """\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
include /etc/nginx/modules-enabled/*.conf;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    js_import gpuserve_response from /etc/nginx/gpuserve/gpuserve_response_end.js;
    js_var $gpuserve_response_end -;
    log_format gpuserve 'end=$gpuserve_response_end';
    server {
        listen 127.0.0.1:8080;
        access_log /dev/stdout gpuserve;
        location / {
            js_header_filter gpuserve_response.header;
            js_body_filter gpuserve_response.body buffer_type=buffer;
            return 200 "ok\\n";
        }
    }
}
"""


def test_nginx_image_serves_a_config_with_nginx_proxys_njs_script(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(NJS_CONFIG)
    conf.chmod(0o644)
    njs = ROOT / "roles/nginx_proxy/files"
    mounts = (f"{conf}:/etc/nginx/nginx.conf:ro", f"{njs}:/etc/nginx/gpuserve:ro")
    # The owners of the nginx processes: root (master) and www-data (worker), from /proc (no ps).
    out = nginx_sh(
        "set -e; nginx -t; nginx; sleep 1; curl -fsS http://127.0.0.1:8080/; sleep 1;"
        ' for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = nginx ]'
        " && stat -c 'owner=%U' $p; done | sort -u",
        *mounts,
    ).stdout
    assert "test is successful" in out, out
    lines = out.split()
    assert "ok" in lines, out
    # The access log of that request: njs ran both filters to the response's last byte.
    assert "end=complete" in lines, out
    assert "owner=root" in lines, out
    assert "owner=www-data" in lines, out


def test_vllm_image_labels_carry_the_build():
    labels = inspect(ref("vllm"))["Config"]["Labels"]
    assert labels["io.gpuserve.version"] == "0.11.0+empty"
    assert labels["io.gpuserve.torch"] == "2.13.0+cpu"
    assert labels["io.gpuserve.cuda"] == "12.8"


def test_a_new_key_built_a_new_vllm_image_and_kept_the_old_one():
    tags = docker("images", "--format", "{{.Tag}}", NAMES["vllm"]).stdout.split()
    assert len(tags) == 2, tags
    new = manifest()["key"]
    (old,) = [t for t in tags if t != new]
    assert inspect(f"{NAMES['vllm']}:{old}")["Config"]["Labels"]["io.gpuserve.key"] == old
    assert (
        inspect(f"{NAMES['vllm']}:{new}")["Created"] > inspect(f"{NAMES['vllm']}:{old}")["Created"]
    )


def test_vllm_image_holds_the_fixture_wheel_in_its_venv():
    # Not imported: vllm imports torch, which the fixture build has not (install_deps false).
    out = docker(
        "run",
        "--rm",
        "--entrypoint",
        "/opt/gpuserve/venv/bin/python",
        ref("vllm"),
        "-c",
        "import importlib.metadata as m, importlib.util as u;"
        " print(m.version('vllm'), u.find_spec('vllm').origin)",
    ).stdout.split()
    site = "/opt/gpuserve/venv/lib/python3.13/site-packages"
    assert out == ["0.11.0+empty", f"{site}/vllm/__init__.py"]


def compilers(image: str) -> list[str]:
    run = docker(
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        ref(image),
        "-c",
        "for c in gcc cc c++ g++ clang nvcc; do command -v $c >/dev/null && echo $c; done; true",
    )
    return run.stdout.split()


@pytest.mark.parametrize("image", ["simulator", "gateway"])
def test_runtime_image_has_no_compiler(image):
    assert compilers(image) == []


def test_vllm_image_has_only_gcc_for_the_triton_jit():
    # container_images_vllm_jit_compiler (default true): gcc + libc headers, nothing else.
    assert compilers("vllm") == ["gcc", "cc"]


@pytest.mark.parametrize("image", RUNTIME)
def test_runtime_image_runs_as_a_non_root_user(image):
    assert inspect(ref(image))["Config"]["User"] == "10001:10001"
    out = docker("run", "--rm", "--entrypoint", "/bin/sh", ref(image), "-c", "id -u; id -g").stdout
    assert out.split() == ["10001", "10001"]


@pytest.mark.parametrize("image", RUNTIME)
def test_runtime_image_checks_its_health_on_slash_health(image):
    config = inspect(ref(image))["Config"]
    assert "/health" in " ".join(config["Healthcheck"]["Test"])
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["/usr/local/bin/gpuserve-entrypoint"]


GATEWAY_CONFIG = """\
upstreams:
  - name: sim-model
    base_url: http://127.0.0.1:8100
auth:
  enabled: false
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A simulator and a gateway container, started together (health checks run every 10 s)."""
    config = tmp_path_factory.mktemp("gateway") / "gateway.yml"
    config.write_text(GATEWAY_CONFIG)
    config.chmod(0o644)
    started: dict[str, tuple[str, int]] = {}
    args = {"simulator": [], "gateway": ["-v", f"{config}:/etc/gpuserve/gateway.yml:ro"]}
    try:
        for image, extra in args.items():
            name = f"gpuserve-ci-img-{image}-{uuid.uuid4().hex[:8]}"
            docker("run", "-d", "--name", name, "-p", "127.0.0.1::8000", *extra, ref(image))
            port = docker("port", name, "8000/tcp").stdout.splitlines()[0].rsplit(":", 1)[1]
            started[image] = (name, int(port))
        yield started
    finally:
        for name, _port in started.values():
            docker("rm", "-f", name, check=False)


def wait_healthy(name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
        if status in ("healthy", "unhealthy"):
            break
        time.sleep(1)
    return status


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.status


@pytest.mark.parametrize("image", ["simulator", "gateway"])
def test_container_becomes_healthy_by_its_healthcheck_and_answers_health(running, image):
    name, port = running[image]
    status = wait_healthy(name)
    logs = docker("logs", name, check=False)
    assert status == "healthy", logs.stdout + logs.stderr
    assert _get(port, "/health") == 200


def test_check_mode_on_the_converged_host_changes_nothing(request):
    recap, out = check_mode.check_mode_changes(
        request.config.option.ansible_inventory, ROOT / "molecule/shared/converge.yml"
    )
    assert recap == dict.fromkeys(recap, 0), check_mode.changed_tasks(out)
    assert HOST in recap
