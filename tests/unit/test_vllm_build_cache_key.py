"""vllm_build's wheel cache key (plugins/filter/vllm_build.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

FILTER = Path(__file__).resolve().parents[2] / "plugins" / "filter" / "vllm_build.py"
spec = importlib.util.spec_from_file_location("vllm_build_filter", FILTER)
assert spec
assert spec.loader
vb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vb)

BASE: dict[str, Any] = {
    "vllm_ref": "sdist:f435a64c24e9c4178d657a76f8edd8548ddc444012f7d06a9f79ac3a6392bfae",
    "patches": [],
    "torch_version": "2.8.0+cu128",
    "cuda_version": "12.8",
    "arch_list": "12.0",
    "python_version": "3.12",
    "target_device": "cuda",
}


def test_same_parts_give_the_same_key() -> None:
    assert vb.cache_key(dict(BASE)) == vb.cache_key(dict(BASE))


def test_key_is_readable_and_filesystem_safe() -> None:
    key = vb.cache_key({**BASE, "vllm_ref": "git:https://github.com/vllm-project/vllm.git@v0.11.0"})
    assert key.startswith("vllmv0.11.0-torch2.8.0_cu128-cu12.8-py3.12-cuda-")
    assert vb.cache_key({**BASE, "version": "0.11.0"}).startswith("vllm0.11.0-torch2.8.0")
    assert "/" not in key
    assert " " not in key


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("vllm_ref", "git:https://github.com/vllm-project/vllm.git@v0.11.1"),
        ("patches", ["0" * 64]),
        ("torch_version", "2.8.0+cu129"),
        ("cuda_version", "12.9"),
        ("arch_list", "9.0 12.0"),
        ("python_version", "3.11"),
        ("target_device", "empty"),
    ],
)
def test_changing_any_part_changes_the_key(part: str, value: Any) -> None:
    assert vb.cache_key({**BASE, part: value}) != vb.cache_key(BASE)


def test_patch_order_matters() -> None:
    a, b = "a" * 64, "b" * 64
    assert vb.cache_key({**BASE, "patches": [a, b]}) != vb.cache_key({**BASE, "patches": [b, a]})


def test_arch_list_spelling_does_not_matter() -> None:
    assert vb.cache_key({**BASE, "arch_list": "12.0;9.0"}) == vb.cache_key(
        {**BASE, "arch_list": "9.0 12.0"}
    )


def test_extra_build_env_is_part_of_the_key() -> None:
    assert vb.cache_key({**BASE, "extra": {"VLLM_USE_X": "1"}}) != vb.cache_key(BASE)
    assert vb.cache_key({**BASE, "extra": {}}) == vb.cache_key(BASE)


@pytest.mark.parametrize("part", vb.KEY_PARTS)
def test_a_missing_part_is_an_error(part: str) -> None:
    parts = {k: v for k, v in BASE.items() if k != part}
    with pytest.raises(ValueError, match=part):
        vb.cache_key(parts)
