#!/usr/bin/env bash
# A systemd machine on the GPU validation host (Ubuntu 24.04, no systemd, no network), so that
# site.yml's serving stages run there unchanged, with systemd, nginx and the real engine.
# docs/gpu-validation.md ("The real engine under systemd") says what it proves and what not.
#
# The machine: the Debian 13 root file system that build-rootfs.sh makes (systemd 257,
# python3-apt, ansible-core, a local apt repository and wheelhouse), booted with systemd as
# PID 1 in its own PID, mount, cgroup, UTS and IPC namespaces (the host's network), with
#   - the host's /dev (the NVIDIA device nodes the host's driver made), /sys, a fresh /proc and
#     a fresh cgroup2 hierarchy (systemd's own: DeviceAllow= is enforced by it);
#   - the driver's userspace libraries and nvidia-smi copied from the host;
#   - the host's torch venv (/opt/torch, Python 3.12) and the Python it was made from, bound
#     read-only at the same paths, and the vLLM kit installed beside it as the engine venv
#     /opt/vllm-kit/venv (vllm_service_venv in tests/gpu/machine/inventory.yml).
# What cannot work there: loading kernel modules (the host's driver is loaded already:
# nvidia-devices skips modules that are loaded), rebooting, the driver/CUDA roles (the host's
# driver is fixed). The vLLM source build runs on the host itself (tests/gpu/build/host.sh).
#
#   machine.sh stage-rootfs DIR...  copy rootfs pieces (.gpucarry-machine/rN) to the host
#   machine.sh assemble             check and unpack the root, add the driver's libraries
#   machine.sh kit                  install the staged vLLM kit as /opt/vllm-kit/venv
#   machine.sh boot                 start systemd as PID 1 of the machine; wait until it runs
#   machine.sh sync                 copy this checkout to /srv/gpuserve inside the machine
#   machine.sh exec CMD...          run CMD inside the machine (all its namespaces, its root)
#   machine.sh stop                 stop the machine (SIGKILL to its PID 1)
set -euo pipefail

ROOT=${GPUSERVE_MACHINE_ROOT:-/srv/gpuserve-machine}
PARTS=/root/machine-parts
KIT_STAGE=/root/stage
PIDFILE=/root/gpuserve-machine.pid
HOST_PY=${GPUSERVE_HOST_PYTHON:-/opt/torch/.venv/bin/python3}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)

die() { echo "machine.sh: $*" >&2; exit 1; }

machine_pid() {
  [[ -f $PIDFILE ]] || die "no machine running ($PIDFILE missing): run 'machine.sh boot'"
  cat "$PIDFILE"
}

stage_rootfs() {
  mkdir -p "$PARTS"
  for d in "$@"; do cp "$d"/* "$PARTS"/; done
  ls -la "$PARTS"
}

# The host's driver userspace (the exact libraries of the loaded kernel module) and tools.
copy_driver() {
  local libdir=/usr/lib/x86_64-linux-gnu f
  for f in "$libdir"/libcuda.so* "$libdir"/libcudadebugger.so* "$libdir"/libnvidia-*.so* "$libdir"/libnvcuvid.so*; do
    [[ -e $f ]] && cp -a "$f" "$ROOT$libdir/"
  done
  for f in /usr/bin/nvidia-smi /usr/bin/nvidia-debugdump; do
    [[ -e $f ]] && cp -a "$f" "$ROOT/usr/bin/"
  done
  ldconfig -r "$ROOT"
}

# The Python the host's torch venv runs on (Ubuntu's 3.12), at the same paths inside, plus the
# shared libraries it and its extension modules need that Debian 13 does not have.
python_paths() {
  "$HOST_PY" - <<'PY'
import os, sys, sysconfig
print(os.path.realpath(sys.executable))
print(sysconfig.get_paths()["stdlib"])
inc = sysconfig.get_paths()["include"]
if os.path.isdir(inc):
    print(inc)
# Debian/Ubuntu's pyconfig.h includes the multiarch one (Triton compiles against both).
multiarch = os.path.join("/usr/include", sysconfig.get_config_var("MULTIARCH") or "", os.path.basename(inc))
if os.path.isdir(multiarch) and multiarch != inc:
    print(multiarch)
PY
}

copy_python_libs() {
  local lib
  { ldd "$(readlink -f "$HOST_PY")"; find "$(python_paths | sed -n 2p)/lib-dynload" -name '*.so' -exec ldd {} \; ; } 2>/dev/null \
    | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
      [[ -e $ROOT$lib ]] || { mkdir -p "$ROOT$(dirname "$lib")"; cp -L "$lib" "$ROOT$lib"; echo "host library: $lib"; }
    done
}

assemble() {
  if [[ -d $ROOT/usr ]]; then
    echo "root exists: $ROOT"
  else
    [[ -f $PARTS/rootfs.sha256 ]] || die "$PARTS/rootfs.sha256 missing: stage r1 first"
    cat "$PARTS"/rootfs.part-* > /root/rootfs.tar.xz
    (cd /root && sha256sum -c "$PARTS/rootfs.sha256")
    mkdir -p "$ROOT"
    tar -xJf /root/rootfs.tar.xz -C "$ROOT" --numeric-owner
    rm -f /root/rootfs.tar.xz
  fi
  # docker export leaves these as empty files/dirs or bind targets of its own.
  rm -f "$ROOT/.dockerenv"
  : > "$ROOT/etc/machine-id"
  echo gpuserve-gpu > "$ROOT/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 gpuserve-gpu\n::1 localhost\n' > "$ROOT/etc/hosts"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  copy_driver
  copy_python_libs
  mkdir -p "$ROOT/opt/torch" "$ROOT/srv/gpuserve" "$ROOT/srv/gpuserve-src"
  local p
  while read -r p; do
    if [[ -d $p ]]; then mkdir -p "$ROOT$p"; else mkdir -p "$ROOT$(dirname "$p")"; : > "$ROOT$p"; fi
  done < <(python_paths)
  [[ -d /usr/local/cuda ]] && mkdir -p "$ROOT$(readlink -f /usr/local/cuda)"
  # Where the host keeps its driver userspace (a /usr/local/nvidia tree, bound at boot).
  if [[ -d /usr/local/nvidia ]]; then
    mkdir -p "$ROOT/usr/local/nvidia"
    grep -rhs nvidia /etc/ld.so.conf.d/ > "$ROOT/etc/ld.so.conf.d/gpuserve-host-nvidia.conf" || true
  fi
  du -sh "$ROOT"
}

# The kit (../shared/gpu) installed as a venv of the host's torch Python: the kit's packages
# first, then the torch venv's (a .pth file each), so the engine is exactly the kit's vLLM on
# the host's torch.
kit() {
  local site=$ROOT/opt/vllm-kit/site venv=/opt/vllm-kit/venv
  if [[ ! -d $site/vllm ]]; then
    mkdir -p "$site"
    SKIP_SMOKE=1 SITE="$site" bash "$KIT_STAGE/assemble.sh" "$KIT_STAGE"
  fi
  local torch_site
  torch_site=$("$HOST_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  exec_in "$(readlink -f "$HOST_PY")" -m venv --without-pip --clear "$venv"
  local pyver
  pyver=$("$HOST_PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
  printf '/opt/vllm-kit/site\n%s\n' "$torch_site" > "$ROOT$venv/lib/$pyver/site-packages/gpuserve-kit.pth"
  exec_in "$venv/bin/python" -c 'import vllm, torch; print("engine venv: vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'
}

boot() {
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "machine already running (pid $(cat "$PIDFILE"))"
  else
    [[ -x $ROOT/lib/systemd/systemd ]] || die "no root at $ROOT: run 'machine.sh assemble'"
    local binds="" p
    while read -r p; do binds+="$p "; done < <(python_paths; echo /opt/torch; [[ -d /usr/local/nvidia ]] && echo /usr/local/nvidia; [[ -d /usr/local/cuda ]] && readlink -f /usr/local/cuda)
    # More binds as SRC:DEST pairs (the models the validation builds on the host).
    for p in ${GPUSERVE_MACHINE_BINDS:-}; do
      mkdir -p "$ROOT${p#*:}"
      binds+="$p "
    done
    setsid unshare --pid --fork --mount --cgroup --uts --ipc \
      env ROOT="$ROOT" BINDS="$binds" bash "$REPO/tests/gpu/machine/boot-in-namespaces.sh" \
      > /root/gpuserve-machine.log 2>&1 < /dev/null &
    # The machine's PID 1 is the child of unshare (setsid may or may not fork first).
    local child="" u
    for _ in $(seq 1 50); do
      for u in $(pgrep -x unshare || true); do
        child=$(pgrep -P "$u" | head -1 || true)
        [[ -n $child ]] && break 2
      done
      sleep 0.2
    done
    [[ -n $child ]] || die "unshare started no child; log: $(cat /root/gpuserve-machine.log)"
    echo "$child" > "$PIDFILE"
  fi
  local state="" deadline=$((SECONDS + 90))
  while ((SECONDS < deadline)); do
    state=$(exec_in systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 1
  done
  echo "machine pid $(cat "$PIDFILE"): systemd is '$state' after ${SECONDS}s"
  exec_in ldconfig
  [[ $state == running || $state == degraded ]] || { cat /root/gpuserve-machine.log; die "systemd did not come up"; }
  exec_in systemctl --failed --no-legend || true
}

exec_in() {
  local pid
  pid=$(machine_pid)
  nsenter --target "$pid" --all --root --wd env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

sync_repo() {
  rm -rf "$ROOT/srv/gpuserve"
  mkdir -p "$ROOT/srv/gpuserve"
  tar -C "$REPO" --exclude=./.gpukit --exclude='./.gpucarry*' --exclude=./.venv --exclude=./.cache -cf - . \
    | tar -C "$ROOT/srv/gpuserve" -xf -
  echo "synced $REPO -> $ROOT/srv/gpuserve"
}

stop() {
  local pid
  pid=$(machine_pid)
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "machine stopped"
}

cmd=${1:-}
shift || true
case $cmd in
  stage-rootfs) stage_rootfs "$@" ;;
  assemble) assemble ;;
  kit) kit ;;
  boot) boot ;;
  sync) sync_repo ;;
  exec) exec_in "$@" ;;
  stop) stop ;;
  *) die "usage: machine.sh stage-rootfs DIR... | assemble | kit | boot | sync | exec CMD... | stop" ;;
esac
