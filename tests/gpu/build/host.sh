#!/usr/bin/env bash
# The real CUDA build of vLLM on the GPU validation host (no network, no systemd, root), by
# the role itself: playbooks/vllm_build.yml over a local connection with
# tests/gpu/build/inventory.yml (air-gapped mode, the host's torch, TORCH_CUDA_ARCH_LIST=12.0,
# the role's MAX_JOBS formula). prepare.sh made the two carries (b1, b2) on the dev machine.
#
#   host.sh stage DIR       copy a carried folder's payload to $BASE/parts
#   host.sh start           check, unpack, install ansible, start the play in the background
#   host.sh status          the play's and the build's progress, memory so far
#   host.sh wait SECONDS    wait for the play to end (at most SECONDS), then status
#   host.sh collect DIR     results (logs, manifest, cuobjdump, memory, ninja timings) into DIR
#
# The one step the role cannot do there is its shared apt step (no mirror is reachable, and
# the host lacks python3-apt and ccache): start checks which of the role's packages are
# installed, skips that step only (--skip-tags vllm_build_install) when apt cannot work, and
# then does the rest of install.yml itself (account, directories, venv) as the role would,
# saying so in play.log. ccache is off (vllm_build_ccache: false): not installed there.
set -euo pipefail
BASE=${GPUSERVE_BUILD_BASE:-/srv/b15}
REPO_SRC=$(cd "$(dirname "$0")/../../.." && pwd)
REPO=$BASE/repo
SITE=$BASE/ansible-site
SRC=/srv/vllm-src
die() { echo "host.sh: $*" >&2; exit 1; }

stage() {
  mkdir -p "$BASE/parts"
  cp "$1"/* "$BASE/parts/"
  ls -la "$BASE/parts"
}

# The role's packages (roles/vllm_build/vars/main.yml: base + compile for a CUDA source build).
role_packages=(python3-venv patch ca-certificates build-essential python3-dev)

start() {
  cd "$BASE/parts"
  for t in payload1.tar payload2.tar; do [[ -f $t ]] || die "$t missing: stage b1 and b2 first"; done
  (cd "$BASE/parts" && awk '{sub("^b[12]/","",$2); print $1"  "$2}' SHA256SUMS | sha256sum -c --quiet) \
    || die "a payload's sha256 differs from SHA256SUMS"
  mkdir -p "$BASE/payload" && tar -C "$BASE/payload" -xf payload1.tar && tar -C "$BASE/payload" -xf payload2.tar
  chmod -R a+rX "$BASE"
  chmod 755 /srv

  # ansible-core for the host's Python (the same as the venv's and torch's: 3.12).
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$BASE"/payload/ansible-wheels/*.whl
  mkdir -p "$SITE/ansible_collections/ansible"
  tar -C "$SITE/ansible_collections/ansible" -xf "$BASE/payload/ansible-posix.tar"

  rm -rf "$REPO" && mkdir -p "$REPO"
  tar -C "$REPO_SRC" --exclude=./.gpukit --exclude='./.gpucarry*' --exclude=./.venv --exclude=./.cache -cf - . | tar -C "$REPO" -xf -

  # FetchContent sources: the bundle (sha256s checked by unpack) plus the labelled stand-ins.
  rm -rf "$SRC" && mkdir -p "$SRC"
  python3 "$REPO/roles/vllm_build/files/vllm_source_bundle.py" unpack --bundle "$BASE/payload/bundle" --dest "$SRC"
  mkdir -p "$SRC/standins" && tar -C "$SRC/standins" -xJf "$BASE/payload/standins.tar.xz"
  chmod -R a+rX "$SRC"
  python3 - "$SRC" "$BASE/extra-vars.json" "$BASE/payload" <<'PY'
import json, sys
src, out, payload = sys.argv[1:]
dirs = json.load(open(f"{src}/fetchcontent-src-dirs.json"))
for var, name in (("FLASH_MLA_SRC_DIR", "flashmla"), ("FMHA_SM100_SRC_DIR", "fmha_sm100"),
                  ("TRITON_KERNELS_SRC_DIR", "triton_kernels")):
    dirs.setdefault(var, f"{src}/standins/{name}")
json.dump({"vllm_build_fetchcontent_src_dirs": dirs,
           "vllm_build_wheelhouse": f"{payload}/bundle/wheelhouse",
           "vllm_build_source_archive": f"{payload}/vllm-0.24.0.tar.gz"}, open(out, "w"), indent=1)
print(json.dumps(dirs, indent=1))
PY

  local skip=() missing=() p
  for p in "${role_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  {
    echo "host.sh: role packages not installed here: ${missing[*]:-none}"
    if true; then
      echo "host.sh: apt reaches no mirror here, so the role's shared apt step is skipped"
      echo "host.sh: (--skip-tags vllm_build_install); host.sh does the rest of install.yml as the role would:"
      echo "host.sh: group/user vllm, /opt/vllm, /var/lib/vllm-build/{src,wheels,logs}, the venv"
    fi
  } | tee "$BASE/play.log"
  if true; then  # apt reaches no mirror here (ubuntu.sources with no network)
    skip=(--skip-tags vllm_build_install)
    getent group vllm >/dev/null || groupadd --system vllm
    id vllm >/dev/null 2>&1 || useradd --system --gid vllm --home-dir /opt/vllm --no-create-home --shell /usr/sbin/nologin vllm
    install -d -o vllm -g vllm -m 0755 /opt/vllm /var/lib/vllm-build /var/lib/vllm-build/src \
      /var/lib/vllm-build/wheels /var/lib/vllm-build/logs /var/cache/vllm-build/ccache
    # Without ensurepip (python3-venv) here: a venv without pip, then pip from its carried wheel.
    if [[ ! -x /opt/vllm/venv/bin/python ]]; then
      runuser -u vllm -- /usr/bin/python3 -m venv /opt/vllm/venv 2>>"$BASE/play.log" \
        || { rm -rf /opt/vllm/venv; runuser -u vllm -- /usr/bin/python3 -m venv --without-pip /opt/vllm/venv
             local pipwhl; pipwhl=$(ls "$BASE"/payload/pip-wheel/pip-*.whl)
             runuser -u vllm -- /opt/vllm/venv/bin/python "$pipwhl/pip" install -q --no-index "$pipwhl" >>"$BASE/play.log" 2>&1; }
    fi
  fi
  local become=()
  # No sudo here: su, with a shell for the nologin account (JSON: -e k=v splits at spaces).
  command -v sudo >/dev/null || become=(-e '{"ansible_become_method": "su", "ansible_become_flags": "-s /bin/sh"}')
  echo "host.sh: become: ${become[*]:-sudo}" | tee -a "$BASE/play.log"

  # Whole-machine memory in use (MemTotal - MemAvailable), every 5 s.
  setsid bash -c 'while :; do awk -v t="$(date +%s)" "/MemTotal/{m=\$2}/MemAvailable/{a=\$2}END{print t, (m-a)/1048576}" /proc/meminfo; sleep 5; done' \
    > "$BASE/mem.log" 2>&1 < /dev/null &
  rm -f "$BASE/play.rc"
  date +%s > "$BASE/start.epoch"
  cd "$REPO"
  setsid env PYTHONPATH="$SITE" ANSIBLE_CONFIG="$REPO/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$REPO/collections:$SITE" \
    ANSIBLE_FORCE_COLOR=0 PYTHONUNBUFFERED=1 \
    bash -c "python3 $SITE/bin/ansible-playbook -i tests/gpu/build/inventory.yml playbooks/vllm_build.yml \
      -e @$BASE/extra-vars.json ${skip[*]} ${become[*]@Q}; echo \$? > $BASE/play.rc" >> "$BASE/play.log" 2>&1 < /dev/null &
  sleep 20
  tail -n 15 "$BASE/play.log"
}

status() {
  local now; now=$(date +%s)
  echo "elapsed: $(( now - $(cat "$BASE/start.epoch") )) s; play rc: $(cat "$BASE/play.rc" 2>/dev/null || echo running)"
  grep -E '^(TASK|fatal|ok: .*msg|FAILED)|vllm_build: ' "$BASE/play.log" | tail -n 6 || true
  local log=/var/lib/vllm-build/logs/build.log
  [[ -e $log ]] && { grep -oE '\[[0-9]+/[0-9]+\]' "$log" | tail -n 1 || true; tail -n 2 "$log" | cut -c1-300; }
  sort -k2 -n -r "$BASE/mem.log" | head -n 1 | awk '{print "peak used GiB so far:", $2, "at", $1}'
}

wait_play() {
  local limit=$1 t=0
  while [[ ! -f $BASE/play.rc ]] && pgrep -f ansible-playbook >/dev/null && [[ $t -lt $limit ]]; do sleep 10; t=$((t + 10)); done
  status
}

collect() {
  local out=$1 log=/var/lib/vllm-build/logs/build.log
  mkdir -p "$out"
  status > "$out/status.txt" 2>&1 || true
  cp "$BASE/play.log" "$out/play.log"
  { cat "$BASE/mem.log"; } > "$out/mem.log"
  [[ -e $log ]] && grep -vE '^\s*$' "$log" | tail -n 3000 > "$out/build-log-tail.txt"
  # ninja's own timings: start/end ms of every step (the CMake build dir under the source tree).
  find /var/lib/vllm-build/src -name .ninja_log -path '*build*' -exec sh -c 'for f; do echo "== $f"; cat "$f"; done' _ {} + \
    > "$out/ninja_log.txt" 2>/dev/null || true
  {
    cat /opt/vllm/vllm-build-manifest.json 2>/dev/null || echo "no manifest"
    echo; find /var/lib/vllm-build/wheels -name 'build-info.json' -exec cat {} + 2>/dev/null
  } > "$out/manifest.json.txt"
  # cuobjdump exits non-zero on an extension without device code: nothing here may stop the rest.
  set +e +o pipefail
  {
    local so
    for so in $(find /opt/vllm/venv/lib -path '*site-packages/vllm/*' -name '*.so' | sort); do
      echo "== $so ($(stat -c %s "$so") bytes)"
      /usr/local/cuda-13.0/bin/cuobjdump --list-elf "$so" 2>&1 | head -n 400
      /usr/local/cuda-13.0/bin/cuobjdump --list-ptx "$so" 2>&1 | head -n 100
    done
    ls -la /var/lib/vllm-build/wheels /var/lib/vllm-build/wheels/* 2>&1 | head -n 20
    find /opt/vllm/venv/lib -path '*vllm/vllm_flash_attn/cute*' -maxdepth 6 -exec ls -ld {} + 2>&1 | head -n 5
    echo "== load the extensions against the host's torch (no sm_120 GPU here: load only)"
    runuser -u vllm -- /opt/vllm/venv/bin/python -c '
import glob, os, torch, vllm
d = os.path.dirname(vllm.__file__)
for so in sorted(glob.glob(d + "/*.so") + glob.glob(d + "/vllm_flash_attn/*.so")):
    try:
        torch.ops.load_library(so); print("loaded", os.path.basename(so))
    except Exception as e:
        print("FAILED", os.path.basename(so), repr(e)[:300])
print("ops in _C_stable_libtorch:", len(list(torch.ops._C)) if hasattr(torch.ops, "_C") else "n/a")
' 2>&1 | tail -n 30
  } > "$out/cuobjdump.txt" 2>&1
  set -e -o pipefail
  ls -la "$out"
}

case "${1:-}" in
  stage) stage "${2:?DIR}" ;;
  start) start ;;
  status) status ;;
  wait) wait_play "${2:?SECONDS}" ;;
  collect) collect "${2:?DIR}" ;;
  *) die "usage: host.sh stage DIR | start | status | wait SECONDS | collect DIR" ;;
esac
