"""triton_decommission's pure parts: the compose block cut, the listen filters, docker run argv."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]


def _load(rel: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compose = _load("plugins/modules/triton_decommission_compose.py", "tdc_compose")
filters = _load("plugins/filter/triton_decommission.py", "tdc_filters")
backup = _load("plugins/modules/triton_decommission_backup.py", "tdc_backup")

FILE = """\
# header comment
---
services:
  # the web app
  web:
    image: web:1   # pinned
    depends_on: [db]

  # Triton serving Phi-2
  triton:
    image: nvcr.io/nvidia/tritonserver:24.08-py3
    ports:
      - "8000:8000"
    # shm_size: 1g

  # the database
  db:
    image: postgres:16
volumes:
  data: {}
# trailing note
"""


def _cut(text: str, service: str) -> str:
    lines = text.splitlines(keepends=True)
    start, end = compose._block(lines, YAML(typ="rt").load(text), service)
    return "".join(lines[:start] + lines[end:])


def test_cutting_a_middle_service_keeps_every_other_line_and_comment() -> None:
    assert _cut(FILE, "triton") == FILE.replace(
        """  # Triton serving Phi-2
  triton:
    image: nvcr.io/nvidia/tritonserver:24.08-py3
    ports:
      - "8000:8000"
    # shm_size: 1g

""",
        "",
    )


def test_cutting_the_last_service_keeps_the_next_top_level_key() -> None:
    out = _cut(FILE, "db")
    assert "postgres" not in out
    assert "# the database" not in out
    assert out.endswith("    # shm_size: 1g\n\nvolumes:\n  data: {}\n# trailing note\n")


def test_cutting_the_first_service_leaves_no_blank_line_after_services() -> None:
    out = _cut(FILE, "web")
    assert "services:\n  # Triton serving Phi-2\n  triton:\n" in out


@pytest.mark.parametrize(
    ("port", "listen", "probe"),
    [
        ({"host_ip": "0.0.0.0", "host_port": 8000}, "8000", "127.0.0.1"),
        ({"host_ip": "", "host_port": 8000}, "8000", "127.0.0.1"),
        ({"host_ip": "127.0.0.1", "host_port": 18000}, "127.0.0.1:18000", "127.0.0.1"),
        ({"host_ip": "10.0.0.5", "host_port": 8000}, "10.0.0.5:8000", "10.0.0.5"),
        ({"host_ip": "::", "host_port": 8000}, "[::]:8000", "127.0.0.1"),
    ],
)
def test_published_port_becomes_an_nginx_listen(port: dict, listen: str, probe: str) -> None:
    assert filters.listen(port) == listen
    assert filters.listen_host(listen) == probe
    assert filters.listen_port(listen) == port["host_port"]


def test_docker_run_argv_rebuilds_a_standalone_container() -> None:
    inspect = {
        "Name": "/triton",
        "Config": {
            "Image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "Env": ["A=1"],
            "Cmd": ["tritonserver", "--model-repository=/models"],
            "Entrypoint": ["/opt/nvidia/nvidia_entrypoint.sh"],
        },
        "HostConfig": {
            "RestartPolicy": {"Name": "unless-stopped"},
            "PortBindings": {"8000/tcp": [{"HostIp": "", "HostPort": "8000"}]},
            "DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}],
            "ShmSize": 1073741824,
            "NetworkMode": "default",
        },
        "Mounts": [
            {"Type": "bind", "Source": "/srv/models", "Destination": "/models", "RW": False}
        ],
    }
    assert backup.run_argv(inspect) == [
        "run", "-d", "--name", "triton", "--restart", "unless-stopped",
        "-p", "8000:8000/tcp", "-v", "/srv/models:/models:ro", "-e", "A=1",
        "--gpus", "all", "--shm-size", "1073741824",
        "--entrypoint", "/opt/nvidia/nvidia_entrypoint.sh",
        "nvcr.io/nvidia/tritonserver:24.08-py3", "tritonserver", "--model-repository=/models",
    ]  # fmt: skip
