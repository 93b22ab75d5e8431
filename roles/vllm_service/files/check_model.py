#!/usr/bin/python3
"""Check that a staged model directory has a readable config.json (installed as check-model).

Simulator mode runs this before gpuserve-sim (ExecStartPre): the simulator loads no weights,
but a model directory vLLM could not load (no config.json, or one that is not JSON) fails
its start the same way it would fail vLLM's. Exit 0 ok, 1 with one line on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check(model_dir: str) -> str | None:
    config = Path(model_dir) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except OSError as err:
        return f"cannot read {config}: {err.strerror or err}"
    except ValueError as err:
        return f"{config} is not valid JSON: {err}"
    if not isinstance(data, dict):
        return f"{config} must hold a JSON object"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: check-model MODEL_DIR", file=sys.stderr)
        return 2
    problem = check(args[0])
    if problem:
        print(f"check-model: {args[0]} cannot be loaded: {problem}", file=sys.stderr)
        return 1
    print(f"check-model: {args[0]} has a valid config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
