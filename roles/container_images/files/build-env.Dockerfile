# gpuserve vLLM build environment: CUDA devel base (nvcc), the version matrix's pinned torch in
# the venv at /opt/vllm/venv (vllm_build_venv), vLLM's build requirements and ccache, so that
# roles/vllm_build/templates/build-vllm.sh.j2 runs in it as in a build host (CUDA_HOME
# /usr/local/cuda, user vllm). This image HAS compilers: it builds, it does not serve.
# Built by roles/container_images (opt-in: container_images_build_env) with the legacy builder
# too (no BuildKit, no RUN --mount).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG TORCH_SPEC
ARG TORCH_PIP_ARGS=""
ARG PIP_ARGS=""
ARG BUILD_REQUIREMENTS
ARG GPUSERVE_KEY
ARG GPUSERVE_PROFILE=""
ARG GPUSERVE_CUDA=""
ARG GPUSERVE_TORCH=""
LABEL io.gpuserve.image="build-env" \
      io.gpuserve.key="${GPUSERVE_KEY}" \
      io.gpuserve.profile="${GPUSERVE_PROFILE}" \
      io.gpuserve.cuda="${GPUSERVE_CUDA}" \
      io.gpuserve.torch="${GPUSERVE_TORCH}"
RUN set -eu; apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev build-essential ccache git patch ca-certificates; \
    rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10002 vllm \
 && useradd --system --uid 10002 --gid 10002 --home-dir /var/lib/vllm-build --create-home \
      --shell /usr/sbin/nologin vllm \
 && mkdir -p /opt/vllm /var/cache/vllm-build/ccache \
 && chown vllm:vllm /opt/vllm /var/cache/vllm-build/ccache
COPY wheels/ /tmp/gpuserve/wheels/
USER 10002:10002
RUN python3 -m venv /opt/vllm/venv \
 && /opt/vllm/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input \
      ${TORCH_PIP_ARGS} ${TORCH_SPEC} \
 && /opt/vllm/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input \
      ${PIP_ARGS} ${BUILD_REQUIREMENTS} \
 && /opt/vllm/venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
ENV CUDA_HOME=/usr/local/cuda \
    CCACHE_DIR=/var/cache/vllm-build/ccache \
    PATH="/usr/local/cuda/bin:/opt/vllm/venv/bin:${PATH}" \
    HOME=/var/lib/vllm-build
WORKDIR /var/lib/vllm-build
