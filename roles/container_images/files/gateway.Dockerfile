# gpuserve gateway image: gpuserve-api (files/api) installed as the gateway role installs it
# (pip install of the staged package source, dependencies from the wheelhouse), in a plain
# Python base (no CUDA). The config is mounted at run time: /etc/gpuserve/gateway.yml
# ($GPUSERVE_API_CONFIG); --host/--port come from the entry point ($GPUSERVE_PORT).
# Built by roles/container_images with the legacy builder too (no BuildKit, no RUN --mount).
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS python
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
ARG GPUSERVE_KEY
ARG GPUSERVE_PROFILE=""
ARG GPUSERVE_VERSION=""
LABEL io.gpuserve.image="gateway" \
      io.gpuserve.key="${GPUSERVE_KEY}" \
      io.gpuserve.profile="${GPUSERVE_PROFILE}" \
      io.gpuserve.version="${GPUSERVE_VERSION}"
RUN groupadd --system --gid 10001 gpuserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/gpuserve --create-home \
      --shell /usr/sbin/nologin gpuserve
COPY --from=install /opt/gpuserve/venv /opt/gpuserve/venv
COPY gpuserve-entrypoint.sh /usr/local/bin/gpuserve-entrypoint
ENV GPUSERVE_IMAGE=gateway \
    GPUSERVE_PORT=8000 \
    GPUSERVE_API_CONFIG=/etc/gpuserve/gateway.yml \
    PATH="/opt/gpuserve/venv/bin:${PATH}" \
    HOME=/home/gpuserve
USER 10001:10001
WORKDIR /home/gpuserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/gpuserve/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GPUSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/gpuserve-entrypoint"]
