#!/usr/bin/env python3
"""Offline source bundle for a vLLM CUDA build (air-gapped fleets).

vLLM's CMake downloads its C++/CUDA dependencies at configure time (FetchContent: CUTLASS,
flash-attention, FlashMLA, ...), each with a ``*_SRC_DIR`` override. This tool reads those
dependencies and their pinned revisions from the vLLM source tree's OWN CMake files
(CMakeLists.txt and cmake/external_projects/*.cmake), gets every one at exactly that
revision (with the git submodules CMake would check out), and writes:

    OUT/manifest.json        what was bundled, from where, at which commit, with sha256s
    OUT/sources/NAME.tar.xz  one archive per dependency: the tree its *_SRC_DIR points at
    OUT/wheelhouse/*.whl     the build requirements (requirements/build[/<device>].txt)

``unpack`` checks the sha256s on the build host and unpacks the archives; it prints (and
writes) the ``{VAR_SRC_DIR: dir}`` map that vllm_build_fetchcontent_src_dirs takes.

Sources: the upstream URL of the CMake file (production), or a local bare git mirror per
URL (``--mirror URL=GITDIR``), or a ready checkout (``--given NAME=DIR``). A revision that
does not match (a mirror lacking the commit, a checkout at another commit) is refused with
the dependency's name and both revisions. Standard library only (plus git and pip).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MANIFEST_SCHEMA = 1
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_KEYWORD = re.compile(r"^[A-Z][A-Z0-9_]+$")
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_ENV_SRC_DIR = re.compile(r"\$ENV\{([A-Z0-9_]+_SRC_DIR)\}")


class BundleError(Exception):
    """A refusal: the message names the dependency and what is wrong."""


# --- reading the CMake files ------------------------------------------------------------


@dataclasses.dataclass
class Command:
    name: str
    args: list[str]
    offset: int


def _cmake_commands(text: str) -> Iterator[Command]:
    """Yield every command invocation name(args...) with its arguments (quotes removed)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            if text.startswith("#[[", i) or text.startswith("#[=", i):
                end = text.find("]]", i)
                i = n if end < 0 else end + 2
            else:
                end = text.find("\n", i)
                i = n if end < 0 else end
            continue
        m = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(").match(text, i)
        if not m or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            i += 1
            continue
        start, i = i, m.end()
        args: list[str] = []
        cur: list[str] = []
        depth = 0
        while i < n:
            c = text[i]
            if c == '"':
                j = i + 1
                buf: list[str] = []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n:
                        buf.append(text[j + 1])
                        j += 2
                        continue
                    buf.append(text[j])
                    j += 1
                cur.append("".join(buf))
                i = j + 1
                continue
            if c == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end
                continue
            if c.isspace() or c in "()":
                if cur:
                    args.append("".join(cur))
                    cur = []
                if c == "(":
                    depth += 1
                elif c == ")":
                    if depth == 0:
                        i += 1
                        break
                    depth -= 1
                i += 1
                continue
            cur.append(c)
            i += 1
        if cur:
            args.append("".join(cur))
        yield Command(m.group(1), args, start)


@dataclasses.dataclass
class Dependency:
    name: str
    override_var: str
    repository: str
    git_tag: str
    declared_in: str
    source_subdir: str = ""
    # None: CMake's default (every submodule, recursively); a list: only these paths.
    git_submodules: list[str] | None = None


def _keyword_args(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    key = ""
    for a in args[1:]:
        if _KEYWORD.match(a):
            key = a
            out.setdefault(key, [])
        elif key:
            out[key].append(a)
    return out


def _expand(value: str, variables: dict[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in variables:
            raise BundleError(f"{where}: ${{{m.group(1)}}} is not set in that file")
        return variables[m.group(1)]

    return _VAR.sub(sub, value)


def read_dependencies(source: Path) -> list[Dependency]:
    """The FetchContent git dependencies of a vLLM source tree, in CMake file order."""
    files = [
        source / "CMakeLists.txt",
        *sorted((source / "cmake/external_projects").glob("*.cmake")),
    ]
    if not files[0].is_file():
        raise BundleError(f"{source} is not a vLLM source tree: it has no CMakeLists.txt")
    deps: list[Dependency] = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(source))
        variables: dict[str, str] = {}
        overrides = [(m.start(), m.group(1)) for m in _ENV_SRC_DIR.finditer(text)]
        for cmd in _cmake_commands(text):
            lname = cmd.name.lower()
            if lname == "set" and len(cmd.args) >= 2:
                variables[cmd.args[0]] = cmd.args[1]
                continue
            if lname not in ("fetchcontent_declare", "fetchcontent_populate") or not cmd.args:
                continue
            kw = _keyword_args(cmd.args)
            if "GIT_REPOSITORY" not in kw:
                continue
            where = f"{rel}: {cmd.args[0]}"
            before = [var for pos, var in overrides if pos < cmd.offset]
            if not before:
                raise BundleError(
                    f"{where} clones {kw['GIT_REPOSITORY']} with no *_SRC_DIR override before it: "
                    "an offline build cannot give it a local directory"
                )
            if not kw.get("GIT_TAG"):
                raise BundleError(f"{where} has no GIT_TAG: nothing pins its revision")
            deps.append(
                Dependency(
                    name=cmd.args[0],
                    override_var=before[-1],
                    repository=_expand(kw["GIT_REPOSITORY"][0], variables, where),
                    git_tag=_expand(kw["GIT_TAG"][0], variables, where),
                    declared_in=rel,
                    source_subdir=_expand(kw.get("SOURCE_SUBDIR", [""])[0], variables, where),
                    git_submodules=(
                        [_expand(s, variables, where) for s in kw["GIT_SUBMODULES"] if s]
                        if "GIT_SUBMODULES" in kw
                        else None
                    ),
                )
            )
    return deps


def read_version(source: Path) -> str:
    pkg_info = source / "PKG-INFO"
    if pkg_info.is_file():
        m = re.search(r"^Version: (\S+)$", pkg_info.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    return ""


# --- git ------------------------------------------------------------------------------------


def _git(git_dir: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise BundleError(f"git {' '.join(args)} in {git_dir}: {proc.stderr.strip()}")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _git_dir_of(path: Path) -> Path:
    """The git directory of a bare repository or of a checkout."""
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BundleError(f"{path} is not a git repository: {proc.stderr.strip()}")
    return Path(proc.stdout.strip())


def normalize_url(url: str) -> str:
    """github.com/NVIDIA/cutlass.git and github.com/nvidia/cutlass name one repository."""
    u = url.strip().rstrip("/")
    u = re.sub(r"\.git$", "", u)
    u = re.sub(r"^(https?|git|ssh)://(git@)?", "", u)
    return u.lower()


@dataclasses.dataclass
class Origin:
    git_dir: Path
    label: str  # "mirror:/x", "given:/x", "url:https://..."


class Sources:
    """Where each repository URL's objects come from: mirror, given checkout or upstream."""

    def __init__(self, mirrors: dict[str, Path], cache: Path) -> None:
        self.mirrors = {normalize_url(k): v for k, v in mirrors.items()}
        self.cache = cache

    def origin(self, url: str, rev: str) -> Origin:
        mirror = self.mirrors.get(normalize_url(url))
        if mirror is not None:
            return Origin(_git_dir_of(mirror), f"mirror:{mirror}")
        # Production: a shallow fetch of exactly this revision from the upstream URL.
        git_dir = self.cache / (re.sub(r"[^a-z0-9]+", "_", normalize_url(url)) + ".git")
        if not git_dir.is_dir():
            subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
        if not _git(git_dir, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False):
            ref = rev if _HEX40.match(rev) else f"+refs/tags/{rev}:refs/tags/{rev}"
            proc = subprocess.run(
                ["git", f"--git-dir={git_dir}", "fetch", "-q", "--depth=1", url, ref],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0 and not _HEX40.match(rev):  # a branch name
                proc = subprocess.run(
                    ["git", f"--git-dir={git_dir}", "fetch", "-q", "--depth=1", url, rev],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode == 0:
                    _git(git_dir, "update-ref", f"refs/heads/{rev}", "FETCH_HEAD")
            if proc.returncode != 0:
                raise BundleError(f"fetching {rev} from {url}: {proc.stderr.strip()}")
        return Origin(git_dir, f"url:{url}")


def resolve(origin: Origin, rev: str, who: str) -> str:
    """The commit of rev in origin, or a refusal naming who pins what and what origin has."""
    commit = ""
    if _HEX40.match(rev):
        commit = _git(
            origin.git_dir, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False
        )
    else:
        for ref in (f"refs/tags/{rev}", f"refs/heads/{rev}", rev):
            commit = _git(
                origin.git_dir, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False
            )
            if commit:
                break
    if not commit:
        head = _git(origin.git_dir, "rev-parse", "-q", "--verify", "HEAD", check=False) or "no HEAD"
        raise BundleError(
            f"{who} pins {rev}, but {origin.label} lacks that revision (its HEAD is {head}): "
            "update the mirror, or give a source at that revision"
        )
    return commit


def _gitmodules(git_dir: Path, commit: str) -> dict[str, str]:
    """path -> url from .gitmodules at commit."""
    raw = _git(git_dir, "show", f"{commit}:.gitmodules", check=False)
    if not raw:
        return {}
    fd, tmp = tempfile.mkstemp()
    try:
        with os.fdopen(fd, "w") as f:
            f.write(raw + "\n")
        out = subprocess.run(
            ["git", "config", "-f", tmp, "--get-regexp", r"^submodule\..*\.(path|url)$"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        os.unlink(tmp)
    names: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        name, _, field = key[len("submodule.") :].rpartition(".")
        names.setdefault(name, {})[field] = value
    return {v["path"]: v["url"] for v in names.values() if "path" in v and "url" in v}


def _gitlinks(git_dir: Path, commit: str) -> dict[str, str]:
    """path -> pinned commit of every submodule (gitlink) in the tree at commit."""
    out = _git(git_dir, "ls-tree", "-r", "-z", commit)
    links = {}
    for entry in out.split("\0"):
        if entry.startswith("160000 commit "):
            meta, _, path = entry.partition("\t")
            links[path] = meta.split()[2]
    return links


# --- archives ---------------------------------------------------------------------------------


def _git_tar(git_dir: Path, treeish: str, excludes: list[str], who: str) -> bytes:
    pathspec = [f":(exclude,glob){e}" for e in excludes]
    proc = subprocess.run(
        [
            "git",
            f"--git-dir={git_dir}",
            "archive",
            "--format=tar",
            treeish,
            *(["--", "."] if pathspec else []),
            *pathspec,
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        missing = re.findall(r"invalid object \S+ \S+ for '([^']+)'", err)
        if missing:
            raise BundleError(
                f"{who}: {git_dir} lacks the content of {', '.join(sorted(set(missing)))} (a "
                "mirror without large files?): leave paths the build does not need out with "
                "--exclude GLOB"
            )
        raise BundleError(f"{who}: git archive {treeish} in {git_dir}: {err.strip()}")
    return proc.stdout


def _copy_members(src: bytes, out: tarfile.TarFile, prefix: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(src), mode="r:") as tin:
        for member in tin:
            if member.type == tarfile.XGLTYPE or member.name == "pax_global_header":
                continue
            member.name = f"{prefix}/{member.name}".rstrip("/") if prefix else member.name
            if member.name in ("", "."):
                continue
            member.uname = member.gname = ""
            member.uid = member.gid = 0
            out.addfile(member, tin.extractfile(member) if member.isfile() else None)


def _extract(tf: tarfile.TarFile, dest: Path) -> None:
    # The "data" filter (no absolute paths, links out of dest or devices) where Python has it.
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
    else:  # Python < 3.11.4
        tf.extractall(dest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class Options:
    sources: Sources
    given: dict[str, Path]
    skip_submodules: dict[str, set[str]]
    excludes: list[str]


def _add_submodules(
    git_dir: Path,
    commit: str,
    wanted: list[str] | None,
    skip: set[str],
    prefix: str,
    who: str,
    opts: Options,
    out: tarfile.TarFile,
    given_root: Path | None,
) -> list[dict[str, object]]:
    """Add the submodules CMake would check out (recursively) under prefix; return records."""
    links = _gitlinks(git_dir, commit)
    urls = _gitmodules(git_dir, commit)
    if wanted is not None:
        unknown = [p for p in wanted if p not in links]
        if unknown:
            raise BundleError(f"{who}: GIT_SUBMODULES names {unknown}, not submodules at {commit}")
    records: list[dict[str, object]] = []
    for path in sorted(links):
        if (wanted is not None and path not in wanted) or path in skip:
            records.append({"path": prefix + path, "commit": links[path], "bundled": False})
            continue
        pinned = links[path]
        sub_who = f"{who} submodule {path}"
        checkout = given_root / path if given_root else None
        if checkout is not None and (checkout / ".git").exists():
            origin = Origin(_git_dir_of(checkout), f"given:{checkout}")
            head = _git(origin.git_dir, "rev-parse", "HEAD")
            if head != pinned:
                raise BundleError(f"{sub_who} is pinned at {pinned}, but {checkout} is at {head}")
        else:
            if path not in urls:
                raise BundleError(f"{sub_who}: no url for it in .gitmodules at {commit}")
            origin = opts.sources.origin(urls[path], pinned)
        sub_commit = resolve(origin, pinned, sub_who)
        _copy_members(
            _git_tar(origin.git_dir, sub_commit, opts.excludes, sub_who), out, prefix + path
        )
        records.append(
            {
                "path": prefix + path,
                "repository": urls.get(path, ""),
                "commit": sub_commit,
                "from": origin.label,
                "bundled": True,
            }
        )
        records += _add_submodules(
            origin.git_dir,
            sub_commit,
            None,
            set(),
            f"{prefix}{path}/",
            sub_who,
            opts,
            out,
            checkout,
        )
    return records


def bundle_dependency(dep: Dependency, opts: Options, dest: Path) -> dict[str, object]:
    who = f"{dep.name} ({dep.override_var}, {dep.declared_in})"
    given = opts.given.get(dep.name) or opts.given.get(dep.override_var)
    if given is not None:
        origin = Origin(_git_dir_of(given), f"given:{given}")
        head = _git(origin.git_dir, "rev-parse", "HEAD")
        pinned = resolve(origin, dep.git_tag, who) if not _HEX40.match(dep.git_tag) else dep.git_tag
        if head != pinned:
            raise BundleError(
                f"{who} is pinned at {dep.git_tag} ({pinned}), but {given} is at {head}"
            )
        if subprocess.run(
            ["git", "-C", str(given), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip():
            raise BundleError(f"{who}: {given} has local changes; bundle a clean checkout")
    else:
        origin = opts.sources.origin(dep.repository, dep.git_tag)
    commit = resolve(origin, dep.git_tag, who)
    archive = dest / f"{dep.name}.tar.xz"
    subdir = dep.source_subdir.strip("/")
    with (
        lzma.open(archive, "wb", preset=6) as xz,
        tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as out,
    ):
        treeish = f"{commit}:{subdir}" if subdir else commit
        _copy_members(_git_tar(origin.git_dir, treeish, opts.excludes, who), out, "")
        submodules = (
            []
            if subdir
            else _add_submodules(
                origin.git_dir,
                commit,
                dep.git_submodules,
                opts.skip_submodules.get(dep.name, set()),
                "",
                who,
                opts,
                out,
                given,
            )
        )
    return {
        **dataclasses.asdict(dep),
        "commit": commit,
        "from": origin.label,
        # The override points at this directory of the repository (SOURCE_SUBDIR, or the root).
        "path_in_repo": subdir or ".",
        "submodules": submodules,
        "archive": f"sources/{archive.name}",
        "sha256": _sha256(archive),
        "size": archive.stat().st_size,
    }


# --- the wheelhouse ---------------------------------------------------------------------------


def build_requirements(source: Path, device: str) -> Path:
    for rel in (f"requirements/build/{device}.txt", "requirements/build.txt"):
        if (source / rel).is_file():
            return source / rel
    raise BundleError(
        f"{source} has neither requirements/build/{device}.txt nor requirements/build.txt"
    )


def _requirement_lines(path: Path, with_torch: bool) -> list[str]:
    """The requirement lines, -r includes followed, minus torch (use_existing_torch.py's rule)."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += _requirement_lines(
                (path.parent / line.split(None, 1)[1]).resolve(), with_torch
            )
            continue
        if line.startswith("-"):  # index options: the bundle's pip args decide
            continue
        if not with_torch and "torch" in line.lower():
            continue
        lines.append(line)
    return lines


def fill_wheelhouse(
    source: Path, device: str, dest: Path, pip_args: list[str], with_torch: bool
) -> dict[str, object]:
    req_file = build_requirements(source, device)
    reqs = _requirement_lines(req_file, with_torch)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        *pip_args,
        *reqs,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BundleError(
            f"pip download of {req_file.relative_to(source)} failed: {proc.stderr.strip()[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    return {
        "requirements_file": str(req_file.relative_to(source)),
        "requirements": reqs,
        "torch_included": with_torch,
        "pip_args": pip_args,
        "wheels": [{"file": f"wheelhouse/{w.name}", "sha256": _sha256(w)} for w in wheels],
    }


# --- commands ---------------------------------------------------------------------------------


def _source_tree(source: Path, tmp: Path) -> tuple[Path, dict[str, object]]:
    info: dict[str, object] = {"path": str(source)}
    if source.is_file():
        info["sha256"] = _sha256(source)
        with tarfile.open(source) as tf:
            _extract(tf, tmp)
        tops = [p for p in tmp.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise BundleError(
                f"{source}: expected one top directory in the archive, found {len(tops)}"
            )
        return tops[0], info
    if (source / ".git").exists():
        info["commit"] = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return source, info


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key or not value:
            raise BundleError(f"{flag} {v!r}: expected KEY=VALUE")
        out[key] = value
    return out


def cmd_create(a: argparse.Namespace) -> dict[str, object]:
    out = Path(a.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"--out {out} is not empty: give a new directory")
    skip: dict[str, set[str]] = {}
    for s in a.skip_submodule:
        name, sep, path = s.partition(":")
        if not sep:
            raise BundleError(f"--skip-submodule {s!r}: expected NAME:PATH")
        skip.setdefault(name, set()).add(path)
    with tempfile.TemporaryDirectory() as tmp:
        tree, src_info = _source_tree(Path(a.source).resolve(), Path(tmp))
        deps = read_dependencies(tree)
        known = {d.name for d in deps} | {d.override_var for d in deps}
        for flag, names in (
            ("--leave-out", a.leave_out),
            ("--given", list(_pairs(a.given, "--given"))),
        ):
            unknown = sorted(set(names) - known)
            if unknown:
                raise BundleError(
                    f"{flag}: {unknown} are not dependencies of this source ({sorted(known)})"
                )
        opts = Options(
            sources=Sources(
                {k: Path(v) for k, v in _pairs(a.mirror, "--mirror").items()}, out / ".git-cache"
            ),
            given={k: Path(v).resolve() for k, v in _pairs(a.given, "--given").items()},
            skip_submodules=skip,
            excludes=a.exclude,
        )
        (out / "sources").mkdir(parents=True)
        bundled, left_out = [], []
        for dep in deps:
            if dep.name in a.leave_out or dep.override_var in a.leave_out:
                left_out.append({**dataclasses.asdict(dep), "reason": "--leave-out"})
                continue
            print(f"bundling {dep.name} ({dep.repository} @ {dep.git_tag})", file=sys.stderr)
            bundled.append(bundle_dependency(dep, opts, out / "sources"))
        wheelhouse = (
            None
            if a.no_wheelhouse
            else fill_wheelhouse(tree, a.target_device, out / "wheelhouse", a.pip_arg, a.with_torch)
        )
        shutil.rmtree(out / ".git-cache", ignore_errors=True)
        manifest: dict[str, object] = {
            "schema": MANIFEST_SCHEMA,
            "created_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vllm": {"version": read_version(tree), **src_info},
            "target_device": a.target_device,
            "excludes": a.exclude,
            "complete": not left_out,
            "dependencies": bundled,
            "left_out": left_out,
            "wheelhouse": wheelhouse,
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def cmd_unpack(a: argparse.Namespace) -> dict[str, str]:
    bundle, dest = Path(a.bundle).resolve(), Path(a.dest).resolve()
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise BundleError(
            f"{bundle}/manifest.json has schema {manifest.get('schema')}, "
            f"this tool reads {MANIFEST_SCHEMA}"
        )
    files = [(d["archive"], d["sha256"]) for d in manifest["dependencies"]]
    files += [
        (w["file"], w["sha256"]) for w in (manifest.get("wheelhouse") or {}).get("wheels", [])
    ]
    for rel, want in files:
        got = _sha256(bundle / rel)
        if got != want:
            raise BundleError(f"{bundle / rel} has sha256 {got}, the manifest says {want}")
    src_dirs: dict[str, str] = {}
    for d in manifest["dependencies"]:
        target = dest / d["name"]
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with tarfile.open(bundle / d["archive"], "r:xz") as tf:
            _extract(tf, target)
        src_dirs[d["override_var"]] = str(target)
    for d in manifest.get("left_out", []):
        print(f"WARNING: {d['name']} ({d['override_var']}) is not in this bundle", file=sys.stderr)
    (dest / "fetchcontent-src-dirs.json").write_text(
        json.dumps(src_dirs, indent=2) + "\n", encoding="utf-8"
    )
    return src_dirs


def cmd_list(a: argparse.Namespace) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        tree, _ = _source_tree(Path(a.source).resolve(), Path(tmp))
        return [dataclasses.asdict(d) for d in read_dependencies(tree)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm_source_bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="bundle the dependencies of a vLLM source (sdist or tree)")
    c.add_argument("--source", required=True, help="vLLM sdist (.tar.gz) or source directory")
    c.add_argument("--out", required=True, help="new directory for the bundle")
    c.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL=GITDIR",
        help="local git mirror of URL",
    )
    c.add_argument(
        "--given",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout at the pinned commit",
    )
    c.add_argument(
        "--skip-submodule",
        action="append",
        default=[],
        metavar="NAME:PATH",
        help="a submodule the build does not need",
    )
    c.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="paths the build does not need (git pathspec glob)",
    )
    c.add_argument(
        "--leave-out",
        action="append",
        default=[],
        metavar="NAME",
        help="do not bundle this dependency (manifest: incomplete)",
    )
    c.add_argument(
        "--target-device", default="cuda", help="requirements/build/<device>.txt (default cuda)"
    )
    c.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        help="extra pip download argument (e.g. --python-version=3.12)",
    )
    c.add_argument(
        "--with-torch", action="store_true", help="keep torch in the wheelhouse (default: stripped)"
    )
    c.add_argument("--no-wheelhouse", action="store_true", help="sources only")
    u = sub.add_parser("unpack", help="check the sha256s and unpack the sources on the build host")
    u.add_argument("--bundle", required=True)
    u.add_argument("--dest", required=True)
    ls = sub.add_parser("list", help="print the dependencies and revisions the CMake files pin")
    ls.add_argument("--source", required=True)
    return p


def main(argv: list[str] | None = None, stdout: IO[str] = sys.stdout) -> int:
    a = parser().parse_args(argv)
    try:
        result = {"create": cmd_create, "unpack": cmd_unpack, "list": cmd_list}[a.command](a)
    except BundleError as e:
        print(f"vllm_source_bundle: {e}", file=sys.stderr)
        return 1
    json.dump(result, stdout, indent=2)
    stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
