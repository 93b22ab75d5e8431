#!/usr/bin/env bash
# Build the systemd test-host images that every Molecule scenario runs on.
#
# No image registry is reachable from CI, so images come from debootstrap and
# `docker import`. Each image is tagged with a hash of this script: a rerun finds
# the tag and rebuilds nothing; editing the package list below rebuilds.
#
# Usage: tests/images/build.sh [debian12|debian13 ...]   (default: both)
set -euo pipefail

MIRROR="${GPUSERVE_TEST_MIRROR:-http://deb.debian.org/debian}"
# What a minimal cloud/server install of the OS brings, plus python3 for Ansible.
PACKAGES="systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,gnupg,curl,iproute2,procps,kmod,sudo,locales"

declare -A SUITE=([debian12]=bookworm [debian13]=trixie)

here="$(cd "$(dirname "$0")" && pwd)"
key="$(sha256sum "$here/build.sh" | cut -c1-12)"

build_one() {
  local name="$1" suite="${SUITE[$1]:-}"
  if [[ -z "$suite" ]]; then
    echo "unknown image '$name': choose from ${!SUITE[*]}" >&2
    return 2
  fi
  local tag="gpuserve-test/${name}:${key}"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "image ${tag}: cached"
  else
    local root
    root="$(mktemp -d /var/tmp/gpuserve-${name}.XXXXXX)"
    echo "image ${tag}: debootstrap ${suite} (takes ~1-2 min)"
    debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root" "$MIRROR" \
      >"/var/tmp/gpuserve-${name}-debootstrap.log" 2>&1 || {
        tail -n 30 "/var/tmp/gpuserve-${name}-debootstrap.log" >&2; return 1; }
    # A container has no consoles or hardware; these units only fail or wait there.
    for unit in getty@tty1.service systemd-udevd.service systemd-firstboot.service \
                systemd-remount-fs.service console-getty.service; do
      ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    echo "deb $MIRROR $suite main" >"$root/etc/apt/sources.list"
    echo 'en_US.UTF-8 UTF-8' >"$root/etc/locale.gen"
    chroot "$root" locale-gen >/dev/null 2>&1 || true
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | docker import \
      --change 'CMD ["/lib/systemd/systemd"]' --change 'ENV container=docker' \
      - "$tag" >/dev/null
    rm -rf "$root"
    echo "image ${tag}: built"
  fi
  # Scenarios refer to the stable name; point it at this build.
  docker tag "$tag" "gpuserve-test/${name}:latest"
}

command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(debian12 debian13)
for t in "${targets[@]}"; do build_one "$t"; done
