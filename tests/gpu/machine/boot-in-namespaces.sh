#!/usr/bin/env bash
# PID 1 of the GPU machine's new namespaces (started by machine.sh boot through unshare):
# mount the machine's file systems, move into its root and become systemd.
# Inputs: ROOT (the unpacked root), BINDS (host paths bound read-only: PATH at the same path,
# or SRC:DEST).
set -euo pipefail
: "${ROOT:?}"

mount --make-rprivate /
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys"
mount --make-rslave "$ROOT/sys"
# systemd's own cgroup2 tree (the root of this cgroup namespace), not the host's mount.
umount -l "$ROOT/sys/fs/cgroup" 2>/dev/null || true
mount -t cgroup2 cgroup2 "$ROOT/sys/fs/cgroup"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/tmp"
for p in ${BINDS:-}; do
  src=${p%%:*} dst=${p#*:}
  mount --bind "$src" "$ROOT$dst"
  mount -o remount,bind,ro "$ROOT$dst"
done

cd "$ROOT"
mkdir -p .host-root
pivot_root . .host-root
umount -l /.host-root
rmdir /.host-root
export container=gpuserve-gpu-machine
exec /lib/systemd/systemd --system --log-target=console
