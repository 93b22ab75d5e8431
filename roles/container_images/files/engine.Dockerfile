# gpuserve engine image: the production vLLM image (GPUSERVE_ENGINE=vllm, from the wheel that
# roles/vllm_build built, in a CUDA runtime base) and, from this same file, the TEST/DEMO
# simulator image (GPUSERVE_ENGINE=simulator: gpuserve-sim, NOT a real engine). Same entry
# shape (gpuserve-entrypoint: --host 0.0.0.0 --port $GPUSERVE_PORT, model from
# $GPUSERVE_MODEL, extra engine flags as arguments) and the same /health check, so the compose
# runtime switches engines with one variable.
# Built by roles/container_images with the legacy builder too (no BuildKit, no RUN --mount).
# No compiler, except gcc in the vLLM image for Triton's JIT (JIT_COMPILER, see below).
# The build context holds: this file, gpuserve-entrypoint.sh, wheels/ (wheels pip installs
# from) and src/ (a staged package source, or empty).
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS python
# python3 + venv; apt only when the base cannot make a venv with pip (a CUDA base has no Python).
RUN set -eu; \
    if ! python3 -m venv /tmp/venv-probe >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm -rf /tmp/venv-probe

FROM python AS install
ARG PIP_ARGS=""
ARG PIP_PACKAGES
COPY wheels/ /tmp/gpuserve/wheels/
COPY src/ /tmp/gpuserve/src/
RUN python3 -m venv /opt/gpuserve/venv \
 && /opt/gpuserve/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input \
      ${PIP_ARGS} ${PIP_PACKAGES}

FROM python
ARG GPUSERVE_ENGINE
# vLLM image only (container_images_vllm_jit_compiler): Triton JIT-compiles its CUDA launcher
# with the host C compiler at the first model load ("Failed to find C compiler" without it), as
# vLLM's own runtime image keeps gcc for. gcc and libc headers only: no g++, no nvcc, no make.
ARG JIT_COMPILER=false
RUN set -eu; \
    if [ "${JIT_COMPILER}" = true ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev; \
      rm -rf /var/lib/apt/lists/*; \
    fi
ARG GPUSERVE_KEY
ARG GPUSERVE_PROFILE=""
ARG GPUSERVE_VERSION=""
ARG GPUSERVE_CUDA=""
ARG GPUSERVE_TORCH=""
LABEL io.gpuserve.image="${GPUSERVE_ENGINE}" \
      io.gpuserve.key="${GPUSERVE_KEY}" \
      io.gpuserve.profile="${GPUSERVE_PROFILE}" \
      io.gpuserve.version="${GPUSERVE_VERSION}" \
      io.gpuserve.cuda="${GPUSERVE_CUDA}" \
      io.gpuserve.torch="${GPUSERVE_TORCH}"
RUN groupadd --system --gid 10001 gpuserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/gpuserve --create-home \
      --shell /usr/sbin/nologin gpuserve
COPY --from=install /opt/gpuserve/venv /opt/gpuserve/venv
COPY gpuserve-entrypoint.sh /usr/local/bin/gpuserve-entrypoint
ENV GPUSERVE_IMAGE="${GPUSERVE_ENGINE}" \
    GPUSERVE_PORT=8000 \
    GPUSERVE_MODEL="" \
    PATH="/opt/gpuserve/venv/bin:${PATH}" \
    HOME=/home/gpuserve
USER 10001:10001
WORKDIR /home/gpuserve
EXPOSE 8000
# Model loading takes minutes: failures in the first 600 s do not count.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/opt/gpuserve/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GPUSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/gpuserve-entrypoint"]
