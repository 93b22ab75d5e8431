#!/usr/bin/env bash
# The GPU tier on the GPU validation host (Ubuntu 24.04, H100/H200, driver 580, CUDA 13.0,
# torch 2.11 in /opt/torch/.venv, no network, no systemd). See docs/gpu-validation.md.
#
#   validation_host.sh stage DIR...   copy kit chunk folders (and extras) into /root/stage
#   validation_host.sh setup          assemble the vLLM kit, test deps, nginx; build the model
#   validation_host.sh serve [TP]     start vLLM on the model (setsid), wait for /health
#   validation_host.sh test           pytest tests/gpu against that server, through the gateway
#   validation_host.sh bench          raw vLLM vs gateway vs nginx->gateway, 128 in / 128 out
#   validation_host.sh hf             stop vLLM, plain transformers generate() baseline
#   validation_host.sh verify         playbooks/verify.yml, preflight, NVML exporter
# Results go to $OUT (default /tmp/gpuserve-out).
set -euo pipefail

PY=/opt/torch/.venv/bin/python3
STAGE=/root/stage
MODEL=${GPUSERVE_GPU_MODEL_DIR:-/root/phi2}
OUT=${OUT:-/tmp/gpuserve-out}
VLLM_PORT=8000
GATEWAY_PORT=9000
NGINX_PORT=9443
KEY=sk-gpu-bench
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH=/tmp/site:/tmp/testdeps:$REPO/files/api:$REPO/files/api/sim
# FlashInfer is not in the kit; NVLink multicast stays off on these hosts.
export VLLM_USE_FLASHINFER_SAMPLER=0 NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
mkdir -p "$OUT"

wait_http() {  # URL TIMEOUT_S
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then echo "timeout waiting for $1" >&2; return 1; fi
    sleep 2
  done
}

stage() {
  mkdir -p "$STAGE"
  for d in "$@"; do cp -r "$d"/. "$STAGE"/; done
  ls "$STAGE" | wc -l
}

setup() {
  SKIP_SMOKE=1 bash "$STAGE/assemble.sh" "$STAGE" | tail -n 3
  mkdir -p /tmp/testdeps /tmp/nginx-root "$STAGE/tokenizer"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/testdeps "$STAGE"/*.whl 2>/dev/null \
    || "$PY" -m pip install -q --no-index --no-deps --target /tmp/testdeps \
         "$STAGE"/tritonclient-*.whl "$STAGE"/gevent*.whl "$STAGE"/greenlet-*.whl \
         "$STAGE"/zope_*.whl "$STAGE"/python_rapidjson-*.whl "$STAGE"/brotli-*.whl
  for deb in "$STAGE"/nginx*.deb; do dpkg -x "$deb" /tmp/nginx-root; done
  cp "$STAGE"/tokenizer*.json "$STAGE"/special_tokens_map.json "$STAGE/tokenizer/"
  if [[ ! -f "$MODEL/config.json" ]]; then
    "$PY" "$STAGE/make_model.py" "$MODEL" >"$OUT/make_model.log" 2>&1
  fi
  du -sh "$MODEL"
}

serve() {
  local tp=${1:-1}
  setsid "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name phi-2 \
    --dtype float16 --host 127.0.0.1 --port "$VLLM_PORT" --max-model-len 2048 \
    --gpu-memory-utilization 0.85 --tensor-parallel-size "$tp" >/root/vllm.log 2>&1 < /dev/null &
  echo $! >/root/vllm.pid
  local start=$SECONDS
  wait_http "http://127.0.0.1:$VLLM_PORT/health" 540 || { tail -n 40 /root/vllm.log; return 1; }
  echo "vLLM healthy after $((SECONDS - start)) s (tp=$tp)"
  grep -E "Using .*backend|KV cache|Maximum concurrency" /root/vllm.log | head -n 5 || true
}

gateway() {  # a gateway for the benchmark: auth on, caps above any benchmark level
  local keys=/tmp/bench-keys.yml conf=/tmp/bench-gateway.yml
  echo -n "$KEY" | "$PY" -m gpuserve_api hash-key --name bench | sed '1s/^/keys:\n/' >"$keys"
  cat >"$conf" <<YAML
listen: {host: 127.0.0.1, port: $GATEWAY_PORT, workers: ${GATEWAY_WORKERS:-4}}
upstreams: [{name: phi-2, base_url: "http://127.0.0.1:$VLLM_PORT"}]
auth: {enabled: true, keys_file: $keys}
limits: {max_in_flight: 0, max_in_flight_per_key: 0}
logging: {level: warning, access_log: false}
YAML
  setsid "$PY" -m gpuserve_api serve --config "$conf" >/root/gateway.log 2>&1 < /dev/null &
  wait_http "http://127.0.0.1:$GATEWAY_PORT/ready" 60 || { tail -n 20 /root/gateway.log; return 1; }
}

nginx() {  # the nginx_proxy role's streaming settings, without TLS, in front of the gateway
  mkdir -p /tmp/nginx-run/logs
  cat >/tmp/nginx-run/nginx.conf <<NGINX
worker_processes 4;
error_log /tmp/nginx-run/logs/error.log warn;
pid /tmp/nginx-run/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path /tmp/nginx-run/body;
  proxy_temp_path /tmp/nginx-run/proxy;
  fastcgi_temp_path /tmp/nginx-run/fastcgi;
  uwsgi_temp_path /tmp/nginx-run/uwsgi;
  scgi_temp_path /tmp/nginx-run/scgi;
  upstream gateway { server 127.0.0.1:$GATEWAY_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 4m;
    location / {
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 600s;
    }
  }
}
NGINX
  /tmp/nginx-root/usr/sbin/nginx -p /tmp/nginx-run -c /tmp/nginx-run/nginx.conf
  wait_http "http://127.0.0.1:$NGINX_PORT/health" 20
}

run_tests() {
  GPUSERVE_GPU_MODEL_DIR=$MODEL GPUSERVE_VLLM_URL=http://127.0.0.1:$VLLM_PORT \
    "$PY" -m pytest -p no:cacheprovider -rs -v "$REPO/tests/gpu" 2>&1 | tee "$OUT/gpu-tests.log"
}

bench() {
  gateway
  local paths=(--path raw=http://127.0.0.1:$VLLM_PORT --path gateway=http://127.0.0.1:$GATEWAY_PORT)
  if nginx; then paths+=(--path nginx=http://127.0.0.1:$NGINX_PORT); fi
  "$PY" "$REPO/tests/bench/serving_bench.py" http "${paths[@]}" --api-key "$KEY" \
    --model-dir "$MODEL" --out "$OUT/bench-http${TAG:-}.json" ${LEVELS:+--levels $LEVELS}
}

hf() {
  if [[ -f /root/vllm.pid ]]; then kill "$(cat /root/vllm.pid)" || true; sleep 10; fi
  "$PY" "$REPO/tests/bench/serving_bench.py" transformers --model-dir "$MODEL" \
    --out "$OUT/bench-hf.json"
}

verify() {
  local ansible=(/tmp/site/bin/ansible-playbook -i "$REPO/inventories/local/hosts.yml")
  (cd "$REPO" && "${ansible[@]}" playbooks/preflight.yml -e preflight_report_path="$OUT/preflight.json" \
     2>&1 | tee "$OUT/preflight.log") || true
  (cd "$REPO" && "${ansible[@]}" playbooks/verify.yml -e verify_report_dir="$OUT" ${VERIFY_ARGS:-} 2>&1 | tee "$OUT/verify.log") || true
  "$PY" "$REPO/roles/monitoring/files/gpuserve_nvml_exporter.py" --once >"$OUT/nvml-exporter.txt" 2>&1 || true
}

cmd=${1:?usage: validation_host.sh stage|setup|serve|test|bench|hf|verify}
shift
case "$cmd" in
  stage) stage "$@" ;;
  setup) setup ;;
  serve) serve "$@" ;;
  test) run_tests ;;
  bench) bench ;;
  hf) hf ;;
  verify) verify ;;
  *) echo "unknown step: $cmd" >&2; exit 2 ;;
esac
