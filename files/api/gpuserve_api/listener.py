"""The gateway's listening socket and its workers' tie to the process that started them.

Under systemd the socket belongs to ``gpuserve-gateway.socket`` (socket activation): it stays
open when the gateway's main process dies, so connections wait in its backlog for the
restarted gateway instead of being refused. The unit runs with ``KillMode=process``: after a
crash of the main process, systemd restarts it at once, and the orphaned workers, told by
the kernel (``PR_SET_PDEATHSIG``), stop accepting and finish their streams alongside the new
workers (docs/serving.md, "When a component dies").
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

# sd_listen_fds(3): the first passed descriptor is 3.
LISTEN_FDS_START = 3
# Set by `serve` for its workers: the pid of the process that must outlive them.
ENV_SUPERVISOR = "GPUSERVE_GATEWAY_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


class ListenerError(Exception):
    """The socket systemd passed is not one the gateway can serve on."""


def inherited_socket() -> socket.socket | None:
    """The listening socket passed by systemd, or None when started without one.

    The ``LISTEN_*`` variables are removed, so the workers this process starts do not take
    them as meant for themselves.
    """
    meant_for_us = os.environ.get("LISTEN_PID") == str(os.getpid())
    count = os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not meant_for_us:
        return None
    if count != "1":
        raise ListenerError(
            f"systemd passed {count or 'no'} sockets (LISTEN_FDS); the gateway's .socket unit "
            "must have exactly one ListenStream="
        )
    # Family and type are read from the descriptor itself.
    sock = socket.socket(fileno=LISTEN_FDS_START)
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ListenerError(
            f"the socket systemd passed is {sock.family.name}/{sock.type.name}; "
            "the gateway serves on a TCP socket (ListenStream=HOST:PORT)"
        )
    return sock


def exit_with_supervisor() -> None:
    """In a worker: get SIGTERM (uvicorn's graceful shutdown) when the supervisor dies.

    A no-op outside Linux and in a process that `serve` did not start as a worker.
    """
    expected = os.environ.get(ENV_SUPERVISOR)
    if not expected or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before the call above: then nothing would signal us.
    if str(os.getppid()) != expected:
        os.kill(os.getpid(), signal.SIGTERM)
