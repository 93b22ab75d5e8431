#!/bin/sh
# Entry point of the gpuserve runtime images: one shape for every engine, so the compose runtime
# switches engine images with one variable. Listens on 0.0.0.0:$GPUSERVE_PORT (the image's
# HEALTHCHECK polls /health there); the served model is $GPUSERVE_MODEL; arguments are passed
# on to the program (extra vLLM serve flags, simulator flags, gateway flags).
set -eu
port="${GPUSERVE_PORT:-8000}"
case "${GPUSERVE_IMAGE:-}" in
  vllm)
    [ -n "${GPUSERVE_MODEL:-}" ] || { echo "gpuserve-entrypoint: set GPUSERVE_MODEL (the model to serve)" >&2; exit 2; }
    exec vllm serve "$GPUSERVE_MODEL" --host 0.0.0.0 --port "$port" "$@" ;;
  simulator)
    # gpuserve-sim: a TEST/DEMO engine (GPU-free simulator of vLLM's OpenAI server).
    exec gpuserve-sim --host 0.0.0.0 --port "$port" --model "${GPUSERVE_MODEL:-sim-model}" "$@" ;;
  gateway)
    exec gpuserve-gateway serve --host 0.0.0.0 --port "$port" "$@" ;;
  *)
    echo "gpuserve-entrypoint: unknown GPUSERVE_IMAGE='${GPUSERVE_IMAGE:-}'" >&2; exit 2 ;;
esac
