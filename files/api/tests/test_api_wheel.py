"""The production wheel holds the gateway alone; the test doubles are their own wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[1]  # files/api
_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".ruff_cache", "tests")


@dataclass
class Wheel:
    names: list[str]
    scripts: list[str]

    @property
    def top_level(self) -> set[str]:
        return {n.split("/")[0] for n in self.names if ".dist-info/" not in n}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Wheel]:
    """Both wheels, built by pip from a clean copy of files/api as a host builds them."""
    tmp = tmp_path_factory.mktemp("wheels")
    src = tmp / "api"
    shutil.copytree(API, src, ignore=_SKIP)
    out = tmp / "out"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), src, src / "sim"],
        check=True,
    )
    found = {}
    for whl in out.glob("*.whl"):
        with zipfile.ZipFile(whl) as zf:
            names = zf.namelist()
            entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
            scripts = [
                line.split("=")[0].strip()
                for line in zf.read(entry).decode().splitlines()
                if "=" in line
            ]
        found[whl.name.split("-")[0]] = Wheel(names, scripts)
    return found


def test_gateway_wheel_holds_the_gateway_alone(wheels: dict[str, Wheel]) -> None:
    gateway = wheels["gpuserve_api"]
    assert gateway.top_level == {"gpuserve_api"}
    modules = {Path(n).stem for n in gateway.names if n.endswith(".py")}
    assert not modules & {"sim", "server", "bench", "procs"}, sorted(modules)
    # The console scripts are what a host gets on PATH: no gpuserve-sim from this wheel.
    assert gateway.scripts == ["gpuserve-gateway"]


def test_sim_wheel_holds_the_test_doubles(wheels: dict[str, Wheel]) -> None:
    sim = wheels["gpuserve_sim"]
    assert sim.top_level == {"gpuserve_sim"}
    assert {"gpuserve_sim/server.py", "gpuserve_sim/procs.py", "gpuserve_sim/bench.py"} <= set(
        sim.names
    )
    assert sim.scripts == ["gpuserve-sim"]


def test_gateway_source_never_imports_the_test_doubles() -> None:
    offenders = [
        str(p.relative_to(API))
        for p in (API / "gpuserve_api").rglob("*.py")
        if "gpuserve_sim" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []
