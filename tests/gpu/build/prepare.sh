#!/usr/bin/env bash
# Prepares, on the development machine (PyPI reachable, local git mirrors of vLLM's
# FetchContent dependencies from the `fetch` tool), what the real CUDA build of vLLM needs on
# the GPU validation host, which reaches no network (docs/vllm-build.md, "The measured CUDA
# build"):
#   - the vLLM sdist (sha256-checked against PyPI's digest);
#   - the offline source bundle made by the role's own tool (make vllm-source-bundle) from the
#     mirrors, with a wheelhouse of the build requirements for the host's CPython 3.12;
#   - labelled STAND-INS for the dependencies whose pinned revision no mirror here holds
#     (FlashMLA a6ec2ba7, MSA, triton v3.5.1): none of them compiles anything for 12.0, CMake
#     only reads or installs their Python files; a wheel built with them is a test artifact;
#   - ansible-core and its missing dependencies as CPython 3.12 wheels (the host has none).
# Output: DEST/b1, DEST/b2 (each under 60 MiB: one device call's carry each) and DEST/SHA256SUMS.
#
#   tests/gpu/build/prepare.sh MIRRORS [DEST]   (MIRRORS: the fetch tool's /work/.mirror)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
mirrors="${1:?usage: prepare.sh MIRRORS_DIR [DEST]}"
dest="${2:-$root/.gpucarry-build}"
version=0.24.0
sdist_sha=0862453adc1f3339f1a0c9dca1179c34d6ed6e118f87b6e5bddd120af614ac66
sdist_url=https://files.pythonhosted.org/packages/d4/17/ea541f9ffb31d438ed6a5a8e1f7b9805410664abf97e326f28416147a5da/vllm-$version.tar.gz
py312=(--python-version=3.12 --implementation=cp --platform=manylinux_2_28_x86_64
       --platform=manylinux_2_17_x86_64 --platform=manylinux2014_x86_64)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$dest"
mkdir -p "$dest/b1" "$dest/b2" "$work/payload"
payload="$work/payload"

curl -fsSL -o "$payload/vllm-$version.tar.gz" "$sdist_url"
echo "$sdist_sha  $payload/vllm-$version.tar.gz" | sha256sum -c --quiet

mirror_args=()
for m in NVIDIA+cutlass vllm-project+flash-attention IST-DASLab+qutlass deepseek-ai+DeepGEMM fmtlib+fmt; do
  url="https://github.com/${m/+//}"
  [[ -d "$mirrors/$m/repo" ]] || { echo "ERROR: mirror $mirrors/$m/repo missing (fetch github:${m/+//})" >&2; exit 1; }
  mirror_args+=(--mirror "$url=$mirrors/$m/repo")
done
pip_args=()
for a in "${py312[@]}"; do pip_args+=("--pip-arg=$a"); done
python3 "$root/roles/vllm_build/files/vllm_source_bundle.py" create \
  --source "$payload/vllm-$version.tar.gz" --out "$payload/bundle" "${mirror_args[@]}" \
  --skip-submodule vllm-flash-attn:csrc/composable_kernel --skip-submodule vllm-flash-attn:third_party/aiter \
  --exclude 'media/**' --exclude 'assets/**' \
  --leave-out flashmla --leave-out fmha_sm100 --leave-out triton_kernels "${pip_args[@]}"

# Stand-ins, each with a STANDIN.txt saying what it is.
standins="$work/standins"
mkdir -p "$standins/flashmla" "$standins/fmha_sm100/python/fmha_sm100"/{csrc,cute,cutlass/include,cutlass/tools/util/include} \
  "$standins/triton_kernels"
fm="$mirrors/vllm-project+FlashMLA/repo"
git --git-dir="$fm" archive HEAD flash_mla | tar -x -C "$standins/flashmla"
echo "STAND-IN: vllm-project/FlashMLA at $(git --git-dir="$fm" rev-parse HEAD), not the pinned a6ec2ba7 (no copy here holds it). For 12.0 CMake compiles nothing of FlashMLA; it reads flash_mla/flash_mla_interface.py." \
  > "$standins/flashmla/STANDIN.txt"
for f in __init__ api bench_utils jit sparse sparse_fmha_adapter; do : > "$standins/fmha_sm100/python/fmha_sm100/$f.py"; done
echo "STAND-IN: empty files in the layout of vllm-project/MSA fee78315 (no copy here). CMake only installs them; vLLM uses fmha_sm100 on sm_100 only." \
  > "$standins/fmha_sm100/STANDIN.txt"
: > "$standins/triton_kernels/__init__.py"
echo "STAND-IN: an empty package instead of triton v3.5.1's python/triton_kernels (that repository is over the size limit here). CMake only installs its .py files." \
  > "$standins/triton_kernels/STANDIN.txt"
tar -C "$standins" -cJf "$payload/standins.tar.xz" .

# ansible-core for the host's Python 3.12 (jinja2, PyYAML, MarkupSafe and packaging are there).
ansible_core="$("$root/.venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')"
python3 -m pip download -q --no-deps --only-binary=:all: "${py312[@]}" --platform=manylinux_2_34_x86_64 \
  -d "$payload/ansible-wheels" "ansible-core==$ansible_core" resolvelib cryptography cffi pycparser
python3 -m pip download -q --no-deps --only-binary=:all: -d "$payload/pip-wheel" pip
# ansible.cfg's profile_tasks callback and the role's patch module (ansible.posix).
tar -C "$root/.venv/lib/python3.11/site-packages/ansible_collections/ansible" -cf "$payload/ansible-posix.tar" posix

# Two carries: b1 = sdist + ansible + stand-ins + the bundle's manifest (~45 MiB);
# b2 = the bundle's sources and wheelhouse (~57 MiB). Each must stay under 60 MiB.
(cd "$payload" && tar -cf "$dest/b1/payload1.tar" "vllm-$version.tar.gz" ansible-wheels pip-wheel ansible-posix.tar standins.tar.xz bundle/manifest.json)
(cd "$payload" && tar -cf "$dest/b2/payload2.tar" bundle/sources bundle/wheelhouse)
(cd "$dest" && sha256sum b1/* b2/* > SHA256SUMS && cp SHA256SUMS b2/)
du -sh "$dest"/b1 "$dest"/b2
for d in "$dest"/b1 "$dest"/b2; do
  [[ $(du -sm "$d" | cut -f1) -lt 60 ]] || { echo "ERROR: $d is 60 MiB or more: split it" >&2; exit 1; }
done
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("bundle complete:", m.get("complete"), "left out:", m.get("left_out"))' "$payload/bundle/manifest.json"
