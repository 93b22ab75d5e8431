#!/usr/bin/env bash
# The real engine under the project's own units, on the GPU validation host: one lease, a few
# back-to-back device calls (docs/gpu-validation.md, "The real engine under systemd").
# Long steps run in the background (setsid) so they go on between calls; each call ends with
# `validate.sh collect`, which copies what is done to $OUT.
#
#   validate.sh probe                    host facts the machine depends on
#   validate.sh stage-rootfs DIR         one piece of the machine's root (.gpucarry-machine/rN)
#   validate.sh stage-kit DIR...         kit chunk folders (.gpukit/cN) into /root/stage
#   validate.sh start-up                 background: unpack the root, boot the machine, smoke test
#   validate.sh start-models             background: the Phi-2-shaped model, a tiny one, a broken one
#   validate.sh start-serve              background, after both: kit venv, site.yml's serving
#                                        stages, tests/gpu through nginx, faults, switches
#   validate.sh start-bench              background, instead of start-serve: the full-stack
#                                        benchmark (issue 17) with the role's default limits,
#                                        Phi-2-shaped model, then the ~1B Llama
#   validate.sh wait-bench SECONDS       follow the progress log until the bench job ends
#   validate.sh collect-bench            the bench results to $OUT
#   validate.sh wait SECONDS             follow the progress log until the serve job ends
#   validate.sh collect                  results so far to $OUT (at most 8 files)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
MACHINE=$HERE/machine.sh
W=/root/validate
RES=$W/results
ROOT=/srv/gpuserve-machine
PY=/opt/torch/.venv/bin/python3
CERT=$ROOT/etc/nginx/tls/gpuserve.crt
URL=https://localhost
KEY=sk-gpu-validation
mkdir -p "$RES"

log() { echo "$(date +%T) $*" | tee -a "$W/progress.log"; }

# Run a step of a snapshot of this checkout in its own session: the next call's copy of the
# tree may replace this one while the step runs.
background() {
  local name=$1 snap=$W/snap-$1
  rm -rf "$snap"
  mkdir -p "$snap"
  tar -C "$REPO" --exclude=./.gpukit --exclude='./.gpucarry*' --exclude=./.venv -cf - . | tar -C "$snap" -xf -
  (setsid bash "$snap/tests/gpu/machine/validate.sh" "job-$name" > "$W/$name.log" 2>&1 < /dev/null &)
  log "started $name (log $W/$name.log)"
}

wait_for() {  # FILE TIMEOUT_S
  local deadline=$((SECONDS + $2))
  until [[ -e $1 ]]; do
    ((SECONDS < deadline)) || { log "timeout waiting for $1"; return 1; }
    sleep 2
  done
}

probe() {
  {
    echo "## host"
    grep PRETTY /etc/os-release; uname -r; nproc; free -g | sed -n 2p
    head -1 /proc/driver/nvidia/version
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    ls /dev/nvidia* | tr '\n' ' '; echo
    echo "python: $(readlink -f $PY) $($PY -V)"
    "$PY" -c 'import sysconfig; p = sysconfig.get_paths(); print("stdlib", p["stdlib"], "include", p["include"])'
    ls /usr/include/python3.12/Python.h 2>&1 || true
    command -v gcc cc xz zstd curl ss 2>&1 || true
    ss -ltn 2>/dev/null | head -20 || true
  } | tee "$RES/probe.txt"
}

job_up() {
  mkdir -p /root/models
  bash "$MACHINE" assemble
  GPUSERVE_MACHINE_BINDS="/root/models:/srv/gpuserve-src/models" bash "$MACHINE" boot
  {
    echo "## machine"
    bash "$MACHINE" exec systemctl is-system-running || true
    bash "$MACHINE" exec systemctl --version | head -1
    bash "$MACHINE" exec nvidia-smi -L
    bash "$MACHINE" exec "$PY" -c 'import torch; x = torch.randn(4096, 4096, device="cuda"); print("torch", torch.__version__, torch.cuda.get_device_name(), "matmul ok", bool((x @ x).isfinite().all()))'
  } 2>&1 | tee "$RES/machine.txt"
  touch "$W/up.done"
  log "machine up"
}

job_models() {
  local s=/root/stage
  mkdir -p "$s/tokenizer" /root/models
  cp "$s"/tokenizer*.json "$s/special_tokens_map.json" "$s/tokenizer/"
  [[ -f /root/models/phi2/config.json ]] || "$PY" "$s/make_model.py" /root/models/phi2
  [[ -f /root/models/tiny/config.json ]] || "$PY" "$s/make_model.py" /root/models/tiny --layers 2 --hidden 320
  [[ -f /root/models/llama1b/config.json ]] || "$PY" "$HERE/make_llama.py" /root/models/llama1b --tokenizer-dir "$s/tokenizer"
  # A model that cannot load: the tiny one with an architecture vLLM does not know.
  rm -rf /root/models/broken
  cp -r /root/models/tiny /root/models/broken
  "$PY" - <<'PY'
import json
p = "/root/models/broken/config.json"
c = json.load(open(p))
c["architectures"] = ["GpuserveBrokenForCausalLM"]
json.dump(c, open(p, "w"))
PY
  # safetensors writes its shards 0600: the service account reads the models in place.
  chmod -R a+rX /root/models
  du -sh /root/models/* | tee "$RES/models.txt"
  touch "$W/models.done"
  log "models built"
}

deploy() {  # MODEL_SET [INVENTORY, relative to the checkout]
  local set=$1 inv=${2:-tests/gpu/machine/inventory.yml} rc=0 t0=$SECONDS
  bash "$MACHINE" sync
  bash "$MACHINE" exec bash -c "cd /srv/gpuserve && ANSIBLE_COLLECTIONS_PATH=/srv/gpuserve/collections:/usr/share/ansible/collections \
    ANSIBLE_FORCE_COLOR=0 ansible-playbook -i $inv site.yml --tags serve,monitoring \
    -e gpu_machine_model_set=$set" > "$W/ansible-$set.log" 2>&1 || rc=$?
  {
    echo "## site.yml --tags serve,monitoring, model set $set: rc=$rc in $((SECONDS - t0)) s"
    grep -E '^(PLAY RECAP|gpuserve-gpu +:)' -A0 "$W/ansible-$set.log" || true
    grep -E 'fatal:|FAILED|Health gate failed' "$W/ansible-$set.log" | head -20 || true
  } | tee -a "$RES/summary.txt"
  return $rc
}

tls_ready() {
  curl -s -o /dev/null -w '%{http_code}' --cacert "$CERT" "$URL/ready" || true
}

checks() {
  [[ -f $CERT ]] || { echo "checks: no nginx certificate at $CERT (the serve stage did not finish)" | tee -a "$RES/summary.txt"; return 1; }
  {
    echo "## through nginx over TLS (certificate verified: --cacert $CERT)"
    echo "/ready: $(tls_ready)"
    curl -s --cacert "$CERT" -H "Authorization: Bearer $KEY" "$URL/v1/models"; echo
    openssl x509 -in "$CERT" -noout -subject -ext subjectAltName 2>/dev/null || true
  } | tee -a "$RES/summary.txt"
  local pyp="$ROOT/opt/vllm-kit/site:$REPO/files/api:$REPO/files/api/sim"
  (cd "$REPO" && PYTHONPATH=$pyp SSL_CERT_FILE=$CERT GPUSERVE_GATEWAY_URL=$URL GPUSERVE_VLLM_URL=http://127.0.0.1:8000 \
    GPUSERVE_GPU_MODEL_DIR=/root/models/phi2 "$PY" -m pytest tests/gpu -v -p no:cacheprovider 2>&1) > "$RES/pytest.txt" || true
  tail -3 "$RES/pytest.txt" | sed 's/^/pytest: /' | tee -a "$RES/summary.txt"
  {
    echo "## systemd-analyze security"
    for u in vllm@llm.service gpuserve-gateway.service nginx.service; do
      echo "$u: $(bash "$MACHINE" exec systemd-analyze security --no-pager "$u" 2>&1 | tail -1)"
    done
    echo "## metrics"
    echo "nvml exporter :9835 lines: $(curl -s http://127.0.0.1:9835/metrics | grep -c '^nvml\|^gpu' || true)"
    curl -s http://127.0.0.1:9835/metrics | grep -v '^#' | head -8
    echo "node exporter :9100 systemd units: $(curl -s http://127.0.0.1:9100/metrics | grep -c '^node_systemd_unit_state' || true)"
    echo "vllm: families $(curl -s http://127.0.0.1:8000/metrics | grep -c '^# TYPE vllm:' || true)"
    echo "monitoring proxy :9180: $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9180/ || true)"
  } 2>&1 | tee -a "$RES/summary.txt"
  bash "$MACHINE" exec systemd-analyze security --no-pager vllm@llm.service > "$RES/security.txt" 2>&1 || true
}

faults() {
  [[ -f $CERT ]] || { echo "faults: no nginx certificate at $CERT (the serve stage did not finish)" | tee -a "$RES/summary.txt"; return 1; }
  (cd "$REPO" && PYTHONPATH=$ROOT/opt/vllm-kit/site SSL_CERT_FILE=$CERT MACHINE=$MACHINE GPUSERVE_URL=$URL \
    "$PY" tests/gpu/machine/faults.py kill-engine) 2>&1 | tee -a "$RES/summary.txt"
}

switch() {  # MODEL_SET
  local set=$1 sampler rc=0
  PYTHONPATH=$ROOT/opt/vllm-kit/site "$PY" "$HERE/faults.py" gpu-sampler "$W/gpu-$set.txt" &
  sampler=$!
  deploy "$set" || rc=$?
  kill "$sampler" 2>/dev/null || true
  {
    echo "switch to $set: rc=$rc; GPU memory during it: $("$PY" "$HERE/faults.py" memory "$W/gpu-$set.txt")"
    echo "/ready after: $(tls_ready); serving: $(bash "$MACHINE" exec systemctl show -p ExecStart --value vllm@llm.service | grep -o 'model=[^ ]*' | head -1)"
  } | tee -a "$RES/summary.txt"
}

# The machine booted, the models built, every kit chunk staged, the kit's venv installed.
machine_ready() {
  wait_for "$W/up.done" 900
  wait_for "$W/models.done" 900
  for c in c1 c2 c3 c4 c5 c6 c7; do wait_for "$W/staged-$c" 900; done
  bash "$MACHINE" kit 2>&1 | tail -5 | tee -a "$RES/summary.txt"
}

job_serve() {
  machine_ready
  log "deploy phi2"
  if deploy phi2; then
    log "checks"; checks
    log "faults"; faults
    log "switch tiny"; switch tiny
    log "switch back"; switch phi2
    log "switch broken"; switch broken
  fi
  bash "$MACHINE" exec journalctl -u vllm@llm.service --no-pager -n 300 > "$RES/journal.txt" 2>&1 || true
  touch "$W/serve.done"
  log "serve job done"
}

# The full-stack benchmark runs with the role's defaults: the validation inventory without
# its test-only per-key cap of 4 streams, and a second API key (streams take turns), since the
# default max_in_flight_per_key (256) is below the top level (512).
BENCH_INV=tests/gpu/machine/inventory-bench.yml
BENCH_KEY2=sk-gpu-bench-second-key

bench_inventory() {
  "$PY" - "$REPO/tests/gpu/machine/inventory.yml" "$REPO/$BENCH_INV" "$BENCH_KEY2" <<'PY'
import sys
import yaml
src, dst, key2 = sys.argv[1:]
inv = yaml.safe_load(open(src))
v = inv["all"]["children"]["gpu_hosts"]["vars"]
v.pop("gateway_limits")
v["gateway_api_keys"].append({"name": "bench", "key": key2})
yaml.safe_dump(inv, open(dst, "w"), sort_keys=False)
PY
}

run_bench() {  # LABEL
  (cd "$REPO" && PYTHONPATH=$ROOT/opt/vllm-kit/site "$PY" tests/bench/fullstack_bench.py run \
    --path raw=http://127.0.0.1:8000 --path stack=$URL --cacert "$CERT" \
    --api-key "$KEY" --api-key "$BENCH_KEY2" --model phi-2 --vocab 50000 --label "$1" \
    --cpu gateway='gpuserve-gateway serve' --cpu nginx='nginx: ' --cpu vllm='vllm.entrypoints' \
    ${BENCH_ARGS:-} --out "$RES/fullstack-$1.json") > "$RES/fullstack-$1.log" 2>&1 || echo "bench $1 failed: rc=$?" | tee -a "$RES/summary.txt"
  tail -n 30 "$RES/fullstack-$1.log" >> "$RES/summary.txt"
}

job_bench() {
  machine_ready
  bench_inventory
  echo "## bench: cores $(nproc); gateway workers from the role's default" >> "$RES/summary.txt"
  # BENCH_SETS: the model sets, in order; BENCH_ARGS: more fullstack_bench.py run options.
  for set in ${BENCH_SETS:-phi2 llama1b}; do
    log "deploy $set (bench inventory)"
    if deploy "$set" "$BENCH_INV"; then
      log "bench $set"; run_bench "$set"
    fi
  done
  bash "$MACHINE" exec journalctl -u vllm@llm.service --no-pager -n 200 > "$RES/journal.txt" 2>&1 || true
  touch "$W/bench.done"
  log "bench job done"
}

collect_bench() {
  local out=${OUT:-/tmp/gpuserve-out}
  mkdir -p "$out"
  cp "$W/progress.log" "$out/" 2>/dev/null || true
  for f in "$RES"/summary.txt "$RES"/journal.txt "$RES"/fullstack-*; do
    [[ -f $f ]] && cp "$f" "$out/"
  done
  cat "$W"/ansible-*.log 2>/dev/null | tail -c 3000000 > "$out/ansible.log" || true
  ls "$out"
}

collect() {
  local out=${OUT:-/tmp/gpuserve-out}
  mkdir -p "$out"
  cp "$W/progress.log" "$out/" 2>/dev/null || true
  for f in summary.txt pytest.txt security.txt journal.txt; do
    [[ -f $RES/$f ]] && cp "$RES/$f" "$out/"
  done
  cat "$RES"/probe.txt "$RES"/machine.txt "$RES"/models.txt > "$out/host.txt" 2>/dev/null || true
  tail -c 4000000 "$W"/ansible-phi2.log > "$out/ansible.log" 2>/dev/null || true
  ls "$out"
}

cmd=${1:-}
shift || true
case $cmd in
  probe) probe ;;
  stage-rootfs) bash "$MACHINE" stage-rootfs "$@" ;;
  stage-kit)
    bash "$REPO/tests/gpu/validation_host.sh" stage "$@"
    for d in "$@"; do touch "$W/staged-$(basename "$d")"; done
    ;;
  start-up | start-models | start-serve | start-bench) background "${cmd#start-}" ;;
  job-up) job_up ;;
  job-bench) job_bench ;;
  collect-bench) collect_bench ;;
  job-models) job_models ;;
  job-serve) job_serve ;;
  wait | wait-bench)
    done_file=$W/serve.done
    [[ $cmd == wait-bench ]] && done_file=$W/bench.done
    deadline=$((SECONDS + ${1:-500}))
    until [[ -e $done_file ]] || ((SECONDS > deadline)); do sleep 5; done
    tail -n 30 "$W/progress.log"; tail -n 40 "$RES/summary.txt" 2>/dev/null || true
    ;;
  collect) collect ;;
  checks) checks ;;
  faults) faults ;;
  *) echo "usage: see the header of $0" >&2; exit 2 ;;
esac
