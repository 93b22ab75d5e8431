"""The offline source bundle (roles/vllm_build/files/vllm_source_bundle.py).

Runs on a SMALL FAKE vLLM source tree made here (fixture CMake files written in the shapes
vLLM 0.24.0's CMakeLists.txt and cmake/external_projects/*.cmake use) and tiny local git
repositories standing in for the upstream ones. No network: pip runs --no-index on a
wheel built here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "roles/vllm_build/files/vllm_source_bundle.py"
spec = importlib.util.spec_from_file_location("vllm_source_bundle", TOOL)
assert spec
assert spec.loader
vsb = importlib.util.module_from_spec(spec)
sys.modules["vllm_source_bundle"] = vsb  # dataclasses look their module up
spec.loader.exec_module(vsb)

# Fixture CMake: the three shapes vLLM 0.24.0 uses (a revision in a set() variable with the
# override in a big CMakeLists.txt; a literal commit with GIT_SUBMODULES; SOURCE_SUBDIR).
CMAKELISTS = """\
cmake_minimum_required(VERSION 3.26)
project(fake_vllm LANGUAGES CXX)
include(FetchContent)
set(FOO_REVISION "v1.0")
if (DEFINED ENV{FAKE_FOO_SRC_DIR})
  set(FAKE_FOO_SRC_DIR $ENV{FAKE_FOO_SRC_DIR})
endif()
if(FAKE_FOO_SRC_DIR)
  FetchContent_Declare(foo SOURCE_DIR ${FAKE_FOO_SRC_DIR})
else()
  FetchContent_Declare(
      foo
      GIT_REPOSITORY @FOO_URL@
      # a comment with ) parentheses (
      GIT_TAG ${FOO_REVISION}
      GIT_SHALLOW TRUE
  )
endif()
"""
BAR_CMAKE = """\
if (DEFINED ENV{BAR_SRC_DIR})
  set(BAR_SRC_DIR $ENV{BAR_SRC_DIR})
endif()
if(BAR_SRC_DIR)
  set(bar_SOURCE_DIR "${BAR_SRC_DIR}")
else()
  set(_BAR_TAG "@BAR_COMMIT@")
  FetchContent_Populate(
    bar
    GIT_REPOSITORY "@BAR_URL@"
    GIT_TAG "${_BAR_TAG}"
    GIT_SUBMODULES "third-party/sub"
    GIT_PROGRESS TRUE
  )
endif()
"""
KERNELS_CMAKE = """\
set(DEFAULT_KERNELS_TAG "v2.0")
if (DEFINED ENV{KERNELS_SRC_DIR})
  FetchContent_Declare(kernels SOURCE_DIR $ENV{KERNELS_SRC_DIR})
else()
  FetchContent_Declare(
          kernels
          GIT_REPOSITORY @KERNELS_URL@
          GIT_TAG ${DEFAULT_KERNELS_TAG}
          SOURCE_SUBDIR python/kernels
  )
endif()
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "protocol.file.allow=always",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit_files(path, files)
    return git(path, "rev-parse", "HEAD")


def commit_files(path: Path, files: dict[str, str]) -> str:
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "c")
    return git(path, "rev-parse", "HEAD")


def add_gitlink(repo: Path, path: str, url: str, commit: str) -> None:
    gm = repo / ".gitmodules"
    gm.write_text(
        (gm.read_text() if gm.exists() else "")
        + f'[submodule "{path}"]\n\tpath = {path}\n\turl = {url}\n'
    )
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{commit},{path}")
    git(repo, "add", ".gitmodules")


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """Fake upstream repos (as bare mirrors) and a fake vLLM source tree pinning them."""
    up = tmp_path / "upstream"
    foo = up / "foo"
    make_repo(foo, {"include/foo.h": "// foo v1.0\n"})
    git(foo, "tag", "v1.0")
    foo_v1 = git(foo, "rev-parse", "HEAD")
    commit_files(foo, {"include/foo.h": "// foo after v1.0\n"})  # main moved on

    sub = up / "sub"
    sub_pinned = make_repo(sub, {"sub.h": "// sub pinned\n"})
    commit_files(sub, {"sub.h": "// sub later\n"})

    bar = up / "bar"
    make_repo(bar, {"csrc/bar.cu": "// bar\n", "media/big.png": "png\n"})
    add_gitlink(bar, "third-party/sub", "https://example.invalid/Org/Sub.git", sub_pinned)
    add_gitlink(bar, "third-party/rocm", "https://example.invalid/org/rocm.git", "1" * 40)
    git(bar, "commit", "-q", "-m", "submodules")
    bar_commit = git(bar, "rev-parse", "HEAD")
    commit_files(bar, {"csrc/bar.cu": "// bar later\n"})

    kernels = up / "kernels"
    make_repo(kernels, {"python/kernels/k.py": "K = 2\n", "big/other.c": "int x;\n"})
    git(kernels, "tag", "v2.0")

    mirrors = {}
    for name in ("foo", "sub", "bar", "kernels"):
        bare = tmp_path / "mirrors" / f"{name}.git"
        git(tmp_path, "clone", "-q", "--mirror", str(up / name), str(bare))
        mirrors[name] = bare

    src = tmp_path / "vllm-0.0.1"
    (src / "cmake/external_projects").mkdir(parents=True)
    (src / "requirements/build").mkdir(parents=True)
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.0.1\n")
    urls = {
        "@FOO_URL@": "https://example.invalid/org/foo.git",
        "@BAR_URL@": "https://example.invalid/org/bar.git",
        "@KERNELS_URL@": "https://example.invalid/org/kernels.git",
        "@BAR_COMMIT@": bar_commit,
    }

    def fill(text: str) -> str:
        for k, v in urls.items():
            text = text.replace(k, v)
        return text

    (src / "CMakeLists.txt").write_text(fill(CMAKELISTS))
    (src / "cmake/external_projects/bar.cmake").write_text(fill(BAR_CMAKE))
    (src / "cmake/external_projects/kernels.cmake").write_text(fill(KERNELS_CMAKE))
    (src / "requirements/common.txt").write_text("fakebuildtool\n")
    (src / "requirements/build/cuda.txt").write_text(
        "# comment\n-r ../common.txt\n--extra-index-url https://example.invalid\ntorch==2.11.0\n"
    )
    mirror_args = [
        "--mirror",
        f"https://example.invalid/org/foo.git={mirrors['foo']}",
        # URL spelling differs in case and .git suffix from the .gitmodules entry: one repository.
        "--mirror",
        f"https://example.invalid/org/sub={mirrors['sub']}",
        "--mirror",
        f"https://example.invalid/org/bar.git={mirrors['bar']}",
        "--mirror",
        f"https://example.invalid/org/kernels.git={mirrors['kernels']}",
    ]
    return {
        "tmp": tmp_path,
        "src": src,
        "up": up,
        "mirrors": mirrors,
        "mirror_args": mirror_args,
        "foo_v1": foo_v1,
        "sub_pinned": sub_pinned,
        "bar_commit": bar_commit,
    }


def run(argv: list[str]) -> tuple[int, dict | list | None]:
    out = io.StringIO()
    rc = vsb.main(argv, stdout=out)
    return rc, (json.loads(out.getvalue()) if rc == 0 else None)


def create(
    source: Path, out: Path, *extra: str, wheelhouse: bool = False
) -> tuple[int, dict | list | None]:
    """`create --source SOURCE --out OUT [--no-wheelhouse] EXTRA...`."""
    return run(
        ["create", "--source", str(source), "--out", str(out)]
        + ([] if wheelhouse else ["--no-wheelhouse"])
        + list(extra)
    )


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:xz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def test_list_reads_names_overrides_and_revisions_from_the_cmake_files(world):
    rc, deps = run(["list", "--source", str(world["src"])])
    assert rc == 0
    by_name = {d["name"]: d for d in deps}
    assert set(by_name) == {"foo", "bar", "kernels"}
    assert by_name["foo"]["override_var"] == "FAKE_FOO_SRC_DIR"
    assert by_name["foo"]["git_tag"] == "v1.0"  # from set(FOO_REVISION ...)
    assert by_name["foo"]["declared_in"] == "CMakeLists.txt"
    assert by_name["bar"]["git_tag"] == world["bar_commit"]
    assert by_name["bar"]["git_submodules"] == ["third-party/sub"]
    assert by_name["kernels"]["source_subdir"] == "python/kernels"


def test_create_bundles_each_dependency_at_its_pinned_revision(world, capsys):
    out = world["tmp"] / "bundle"
    rc, manifest = create(world["src"], out, "--exclude", "media/**", *world["mirror_args"])
    assert rc == 0, capsys.readouterr().err
    assert manifest["complete"] is True
    assert manifest["vllm"]["version"] == "0.0.1"
    deps = {d["name"]: d for d in manifest["dependencies"]}
    # The tag's commit, not main's newer one.
    assert deps["foo"]["commit"] == world["foo_v1"]
    assert members(out / deps["foo"]["archive"]) == {"include/foo.h": b"// foo v1.0\n"}
    # bar: its own tree minus the excluded media, plus ONLY the GIT_SUBMODULES one, at its gitlink.
    bar = members(out / deps["bar"]["archive"])
    assert bar["csrc/bar.cu"] == b"// bar\n"
    assert bar["third-party/sub/sub.h"] == b"// sub pinned\n"
    assert not any(n.startswith(("media/", "third-party/rocm")) for n in bar)
    subs = {s["path"]: s for s in deps["bar"]["submodules"]}
    assert subs["third-party/sub"]["commit"] == world["sub_pinned"]
    assert subs["third-party/sub"]["bundled"] is True
    assert subs["third-party/rocm"]["bundled"] is False
    # SOURCE_SUBDIR: the override points at that directory, so only it is bundled.
    assert deps["kernels"]["path_in_repo"] == "python/kernels"
    assert members(out / deps["kernels"]["archive"]) == {"k.py": b"K = 2\n"}
    # Every sha256 in the manifest is the file's, and the manifest on disk is the one returned.
    for d in deps.values():
        assert hashlib.sha256((out / d["archive"]).read_bytes()).hexdigest() == d["sha256"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_a_mirror_lacking_the_pinned_commit_is_refused_with_both_revisions(world, capsys):
    # A mirror of bar made before the pinned commit existed.
    old = world["tmp"] / "old-bar.git"
    first = git(world["up"] / "bar", "rev-list", "--max-parents=0", "HEAD")
    git(world["tmp"], "init", "-q", "--bare", "-b", "main", str(old))
    git(world["up"] / "bar", "push", "-q", str(old), f"{first}:refs/heads/main")
    args = [a.replace(str(world["mirrors"]["bar"]), str(old)) for a in world["mirror_args"]]
    rc, _ = create(world["src"], world["tmp"] / "b", *args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "bar (BAR_SRC_DIR, cmake/external_projects/bar.cmake)" in err
    assert f"pins {world['bar_commit']}" in err
    assert f"its HEAD is {first}" in err


def test_a_given_checkout_at_another_revision_is_refused(world, capsys):
    checkout = world["tmp"] / "foo-checkout"
    git(world["tmp"], "clone", "-q", str(world["up"] / "foo"), str(checkout))
    head = git(checkout, "rev-parse", "HEAD")
    rc, _ = create(
        world["src"], world["tmp"] / "b", "--given", f"foo={checkout}", *world["mirror_args"]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        f"foo (FAKE_FOO_SRC_DIR, CMakeLists.txt) is pinned at v1.0 ({world['foo_v1']}), "
        f"but {checkout} is at {head}" in err
    )
    # The same checkout at the tag is accepted.
    git(checkout, "checkout", "-q", "v1.0")
    rc, manifest = create(
        world["src"],
        world["tmp"] / "b2",
        "--given",
        f"foo={checkout}",
        "--exclude",
        "media/**",
        *world["mirror_args"],
    )
    assert rc == 0, capsys.readouterr().err
    assert manifest["dependencies"][0]["from"] == f"given:{checkout}"


def test_a_mirror_missing_file_content_names_the_files(world, capsys):
    # A mirror holding every object but one blob: what a snapshot without large files is.
    src = world["up"] / "bar"
    blob = git(src, "rev-parse", f"{world['bar_commit']}:media/big.png")
    objects = [line.split()[0] for line in git(src, "rev-list", "--objects", "--all").splitlines()]
    pack = subprocess.run(
        ["git", "pack-objects", "-q", "--stdout"],
        cwd=src,
        input="\n".join(o for o in objects if o != blob).encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout
    bare = world["tmp"] / "bar-without-large-files.git"
    git(world["tmp"], "init", "-q", "--bare", str(bare))
    subprocess.run(["git", f"--git-dir={bare}", "unpack-objects", "-q"], input=pack, check=True)
    git(
        world["tmp"],
        f"--git-dir={bare}",
        "update-ref",
        "refs/heads/main",
        git(src, "rev-parse", "main"),
    )
    args = [a.replace(str(world["mirrors"]["bar"]), str(bare)) for a in world["mirror_args"]]
    rc, _ = create(world["src"], world["tmp"] / "b", *args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "bar (BAR_SRC_DIR" in err
    assert "media/big.png" in err
    assert "--exclude" in err


def test_without_a_mirror_it_fetches_the_upstream_url(world, capsys):
    # The production path: no mirror for foo, its "upstream" URL is a file:// repository.
    src = world["src"]
    text = (src / "CMakeLists.txt").read_text()
    (src / "CMakeLists.txt").write_text(
        text.replace("https://example.invalid/org/foo.git", (world["up"] / "foo").as_uri())
    )
    args = [a for a in world["mirror_args"] if "/foo.git" not in a]
    args = [
        a
        for i, a in enumerate(args)
        if not (a == "--mirror" and (i + 1 == len(args) or args[i + 1] == "--mirror"))
    ]
    rc, manifest = create(src, world["tmp"] / "b", "--exclude", "media/**", *args)
    assert rc == 0, capsys.readouterr().err
    foo = manifest["dependencies"][0]
    assert foo["from"].startswith("url:file://")
    assert foo["commit"] == world["foo_v1"]


def _fake_wheel(dest: Path, name: str, version: str) -> Path:
    dist = f"{name}-{version}.dist-info"
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}/RECORD", "")
    return path


def test_wheelhouse_and_unpack_round_trip(world, capsys):
    index = world["tmp"] / "index"
    index.mkdir()
    _fake_wheel(index, "fakebuildtool", "1.0")
    out = world["tmp"] / "bundle"
    rc, manifest = create(
        world["src"],
        out,
        "--exclude",
        "media/**",
        "--pip-arg=--no-index",
        f"--pip-arg=--find-links={index}",
        *world["mirror_args"],
        wheelhouse=True,
    )
    assert rc == 0, capsys.readouterr().err
    wh = manifest["wheelhouse"]
    # requirements/build/cuda.txt, its -r include followed, torch stripped (use_existing_torch.py).
    assert wh["requirements_file"] == "requirements/build/cuda.txt"
    assert wh["requirements"] == ["fakebuildtool"]
    assert [w["file"] for w in wh["wheels"]] == ["wheelhouse/fakebuildtool-1.0-py3-none-any.whl"]

    dest = world["tmp"] / "srv"
    rc, src_dirs = run(["unpack", "--bundle", str(out), "--dest", str(dest)])
    assert rc == 0, capsys.readouterr().err
    assert src_dirs == {
        "FAKE_FOO_SRC_DIR": str(dest / "foo"),
        "BAR_SRC_DIR": str(dest / "bar"),
        "KERNELS_SRC_DIR": str(dest / "kernels"),
    }
    assert (dest / "bar/third-party/sub/sub.h").read_text() == "// sub pinned\n"
    assert json.loads((dest / "fetchcontent-src-dirs.json").read_text()) == src_dirs

    # A changed archive is refused before anything is unpacked.
    archive = out / manifest["dependencies"][0]["archive"]
    archive.write_bytes(archive.read_bytes() + b"x")
    rc, _ = run(["unpack", "--bundle", str(out), "--dest", str(world["tmp"] / "srv2")])
    assert rc == 1
    assert "the manifest says" in capsys.readouterr().err


def test_leave_out_marks_the_bundle_incomplete_and_unknown_names_are_refused(world, capsys):
    rc, manifest = create(
        world["src"],
        world["tmp"] / "b",
        "--leave-out",
        "KERNELS_SRC_DIR",
        "--exclude",
        "media/**",
        *world["mirror_args"],
    )
    assert rc == 0, capsys.readouterr().err
    assert manifest["complete"] is False
    assert [d["name"] for d in manifest["left_out"]] == ["kernels"]
    rc, _ = create(world["src"], world["tmp"] / "c", "--leave-out", "nope", wheelhouse=True)
    assert rc == 1
    assert "'nope'" in capsys.readouterr().err


def test_the_real_vllm_0_24_0_shapes_parse():
    # CMake text copied in shape from vLLM 0.24.0's CMakeLists.txt (the CUTLASS block):
    # the override comes before, and GIT_TAG is a variable set earlier in the same file.
    text = """
    set(CUTLASS_REVISION "v4.4.2")
    if (DEFINED ENV{VLLM_CUTLASS_SRC_DIR})
      set(VLLM_CUTLASS_SRC_DIR $ENV{VLLM_CUTLASS_SRC_DIR})
    endif()
    FetchContent_Declare(
        cutlass
        GIT_REPOSITORY https://github.com/nvidia/cutlass.git
        # Please keep this in sync with CUTLASS_REVISION line above.
        GIT_TAG ${CUTLASS_REVISION}
        GIT_PROGRESS TRUE
        GIT_SHALLOW TRUE
    )
    """
    cmds = [c for c in vsb._cmake_commands(text) if c.name == "FetchContent_Declare"]
    assert cmds[0].args[:5] == [
        "cutlass",
        "GIT_REPOSITORY",
        "https://github.com/nvidia/cutlass.git",
        "GIT_TAG",
        "${CUTLASS_REVISION}",
    ]
    assert vsb.normalize_url("https://github.com/NVIDIA/cutlass.git") == vsb.normalize_url(
        "https://github.com/nvidia/cutlass"
    )
