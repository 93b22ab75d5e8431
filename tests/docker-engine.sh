#!/usr/bin/env bash
# Make sure a Docker engine answers, for Molecule. CI machines start with none:
# install Debian/Ubuntu's docker.io when the client or daemon is missing, then
# start dockerd in the background and wait for it.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  echo "docker engine: running"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker engine: installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
echo "docker engine: starting dockerd (log: /var/log/gpuserve-dockerd.log)"
nohup dockerd >/var/log/gpuserve-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker engine: running"
    exit 0
  fi
  sleep 1
done
echo "docker engine: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 /var/log/gpuserve-dockerd.log >&2
exit 1
