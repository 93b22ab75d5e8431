#!/usr/bin/env python3
"""Download one pinned revision of a Hugging Face Hub model (installed as fetch-hf).

Run with the vLLM venv's python (it holds huggingface_hub). Lists the revision's files
first, keeps those matching --allow-pattern, checks the free disk space (size + reserve),
downloads into DEST.partial, checks every LFS file against the sha256 the Hub lists, then
renames to DEST and writes DEST/.gpuserve-model.json. The token comes from $HF_TOKEN.

    fetch-hf --repo-id microsoft/phi-2 --revision <sha> --dest /srv/models/microsoft--phi-2@<sha>
             [--allow-pattern '*.json' ...] [--reserve-gb 5] [--endpoint https://huggingface.co]

Exit 0 done (or already there), 1 download/check failure, 3 not enough disk space.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fetch-hf")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--allow-pattern", action="append", default=[])
    p.add_argument("--reserve-gb", type=float, default=5.0)
    p.add_argument("--endpoint", default="https://huggingface.co")
    args = p.parse_args(argv)

    from huggingface_hub import HfApi, snapshot_download

    dest = Path(args.dest)
    if (dest / ".gpuserve-model.json").exists():
        print(f"fetch-hf: {dest} is already complete")
        return 0
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=args.endpoint, token=token)
    info = api.model_info(args.repo_id, revision=args.revision, files_metadata=True)
    patterns = args.allow_pattern or ["*"]
    files = [
        s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, pat) for pat in patterns)
    ]
    if not files:
        print(f"fetch-hf: no file of {args.repo_id}@{args.revision} matches {patterns}")
        return 1
    need = sum(s.size or 0 for s in files)
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    reserve = int(args.reserve_gb * 2**30)
    if free - need < reserve:
        print(
            f"fetch-hf: not enough disk space on {dest.parent}: "
            f"{args.repo_id}@{args.revision} needs "
            f"{need / 2**30:.1f} GiB and {args.reserve_gb} GiB must stay free, but only "
            f"{free / 2**30:.1f} GiB are free"
        )
        return 3
    partial = dest.with_name(dest.name + ".partial")
    snapshot_download(
        repo_id=args.repo_id,
        revision=args.revision,
        allow_patterns=patterns,
        local_dir=str(partial),
        token=token,
        endpoint=args.endpoint,
    )
    for s in files:
        lfs = getattr(s, "lfs", None)
        expected = getattr(lfs, "sha256", None) if lfs is not None else None
        if expected and sha256_of(partial / s.rfilename) != expected:
            print(f"fetch-hf: {s.rfilename} does not match the Hub's sha256 {expected}")
            return 1
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    marker = {
        "source": "hf",
        "repo_id": args.repo_id,
        "revision": args.revision,
        "files": sorted(s.rfilename for s in files),
        "bytes": need,
    }
    (partial / ".gpuserve-model.json").write_text(json.dumps(marker, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    print(f"fetch-hf: {args.repo_id}@{args.revision}: {len(files)} files, {need / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
