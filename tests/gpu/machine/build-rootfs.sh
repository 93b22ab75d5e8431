#!/usr/bin/env bash
# Builds, on the development machine (Docker, PyPI and Debian's archive reachable), the root
# file system of the GPU validation host's systemd machine (tests/gpu/machine/machine.sh):
# Debian 13 (the project's gpuserve-test/debian13 test image: systemd 257, python3-apt) plus
#   - ansible-core at the controller's pin and the collections the serving stages use
#     (community.crypto, community.general, community.docker for the compose runtime's module,
#     which serve.yml names, and ansible.posix for ansible.cfg's profile_tasks callback), copied
#     from this checkout's .venv;
#   - gcc and libc6-dev: Triton (torch.compile) compiles its CUDA launchers with the host's C
#     compiler at run time;
#   - /var/local/gpuserve-apt: a local apt repository (a fixture of an operator's mirror) with
#     exactly the Debian packages the serving roles install (nginx, libnginx-mod-http-js,
#     prometheus-node-exporter, python3-venv, python3-packaging and their dependencies), as
#     the only apt source: the GPU host reaches no network;
#   - /var/local/gpuserve-wheels: the gateway's wheelhouse for Python 3.13
#     (tests/fixtures/api_wheelhouse) and the NVML exporter's pinned wheels.
# The packages the roles install are downloaded, not installed: the roles install them.
# Output: DEST/rootfs.tar.xz cut into pieces of at most 58 MiB (DEST/r1, r2, ...), each
# folder small enough to travel with one device call, and DEST/rootfs.sha256.
#
#   tests/gpu/machine/build-rootfs.sh [DEST]     (default .gpucarry-machine; 23 min on a busy 2-core machine, mostly xz)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
dest="${1:-$root/.gpucarry-machine}"
image=gpuserve-test/debian13
name=gpuserve-gpu-rootfs
coll="$root/.venv/lib/python3.11/site-packages/ansible_collections"
ansible_core="$("$root/.venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')"

docker image inspect "$image" >/dev/null 2>&1 || { echo "ERROR: $image is missing: run 'make images' first" >&2; exit 1; }
"$root/tests/fixtures/api_wheelhouse/build.sh" >/dev/null
wheelhouse="$root/.cache/wheelhouse/api"

docker rm -f "$name" >/dev/null 2>&1 || true
docker create --name "$name" --entrypoint sleep "$image" infinity >/dev/null
docker start "$name" >/dev/null
docker exec "$name" mkdir -p /var/local/gpuserve-wheels /opt/gpuserve-src
docker cp "$wheelhouse/." "$name:/var/local/gpuserve-wheels/"
docker exec "$name" mkdir -p /usr/share/ansible/collections/ansible_collections/community \
  /usr/share/ansible/collections/ansible_collections/ansible
for c in community/crypto community/general community/docker ansible/posix; do
  docker cp "$coll/$c" "$name:/usr/share/ansible/collections/ansible_collections/$c"
done
nvml_reqs="$("$root/.venv/bin/python" - "$root/roles/monitoring/defaults/main.yml" <<'PY'
import sys, yaml
for p in yaml.safe_load(open(sys.argv[1]))["monitoring_nvml_exporter_packages"]:
    print(f"{p['name']}=={p['version']}")
PY
)"
[[ -n "$nvml_reqs" ]] || { echo "ERROR: no pins read from monitoring_nvml_exporter_packages" >&2; exit 1; }
# pip runs here, not in the container (which may not trust this machine's proxy).
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"; docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" \
  "ansible-core==$ansible_core" $nvml_reqs
docker exec "$name" mkdir -p /var/cache/gpuserve-controller
docker cp "$wheels/." "$name:/var/cache/gpuserve-controller/"

docker exec -e ANSIBLE_CORE="$ansible_core" -e NVML_REQS="$nvml_reqs" "$name" bash -euo pipefail -c '
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# ansible-core from PyPI at the controller pin, its dependencies from Debian.
apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-pip apt-utils \
  python3-jinja2 python3-yaml python3-cryptography python3-packaging python3-resolvelib >/dev/null
pip3 install -q --break-system-packages --no-cache-dir --no-index --no-deps /var/cache/gpuserve-controller/ansible_core-*.whl
mv /var/cache/gpuserve-controller/*.whl /var/local/gpuserve-wheels/
apt-get purge -y -qq python3-pip >/dev/null
# What the serving roles apt-install, with the dependencies this root lacks: downloaded only.
apt-get clean
apt-get install -y -qq --download-only --no-install-recommends \
  nginx libnginx-mod-http-js prometheus-node-exporter python3-venv python3-packaging >/dev/null
mkdir -p /var/local/gpuserve-apt
mv /var/cache/apt/archives/*.deb /var/local/gpuserve-apt/
(cd /var/local/gpuserve-apt && apt-ftparchive packages . > Packages)
rm -f /etc/apt/sources.list.d/* /etc/apt/sources.list
echo "deb [trusted=yes] file:/var/local/gpuserve-apt ./" > /etc/apt/sources.list.d/gpuserve-local.list
apt-get purge -y -qq apt-utils >/dev/null
apt-get clean; rm -rf /var/lib/apt/lists/* /root/.cache
ls /var/local/gpuserve-apt | sed "s/^/apt: /"
ansible --version | head -1
'
mkdir -p "$dest"
rm -rf "$dest"/r[0-9]* "$dest/rootfs.sha256"
docker export "$name" | xz -T2 -5 > "$dest/rootfs.tar.xz"
(cd "$dest" && sha256sum rootfs.tar.xz > rootfs.sha256 && split -b 58M -d -a 1 rootfs.tar.xz rootfs.part-)
i=1
for part in "$dest"/rootfs.part-*; do
  mkdir -p "$dest/r$i"
  mv "$part" "$dest/r$i/"
  i=$((i + 1))
done
cp "$dest/rootfs.sha256" "$dest/r1/"
rm -f "$dest/rootfs.tar.xz"
du -sh "$dest"/r*
