# gpuserve nginx image: the distribution's nginx (Debian/Ubuntu packages, on the same base as the
# other images), because the config roles/nginx_proxy renders is Debian nginx's: `user www-data;`,
# njs loaded through /etc/nginx/modules-enabled/, /etc/nginx/mime.types; the official nginx image
# has none of these. The compose runtime mounts nginx.conf, conf.d, the TLS and njs directories
# and runs `nginx -g 'daemon off;'`; its health check runs curl in here.
# Built by roles/container_images with the legacy builder too (no BuildKit, no RUN --mount).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG NGINX_PACKAGES
ARG GPUSERVE_KEY
ARG GPUSERVE_PROFILE=""
LABEL io.gpuserve.image="nginx" \
      io.gpuserve.key="${GPUSERVE_KEY}" \
      io.gpuserve.profile="${GPUSERVE_PROFILE}"
# policy-rc.d 101: the packages' maintainer scripts must not start nginx during the build (only
# when the base has none of its own, which then stays). The default site listens on port 80 of
# every address: removed, the image serves only the config that is mounted into it. nginx's
# workers (www-data) join the other images' gpuserve group (gid 10001, engine.Dockerfile): the
# models' socket directory is theirs (0750), and monitoring's scrape proxy reads their /metrics.
RUN set -eu; \
    created=""; \
    if [ ! -e /usr/sbin/policy-rc.d ]; then \
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; created=1; \
    fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${NGINX_PACKAGES}; \
    rm -rf /var/lib/apt/lists/*; \
    if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
    rm -f /etc/nginx/sites-enabled/default /etc/nginx/sites-available/default; \
    groupadd --system --gid 10001 gpuserve; usermod --append --groups gpuserve www-data; \
    nginx -V 2>&1 | head -n 1; \
    ls /etc/nginx/modules-enabled/
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
