"""gpuserve-gateway: serve | check-config | hash-key.

    gpuserve-gateway [serve] [--config PATH] [--host H] [--port N] [--workers N]
    gpuserve-gateway check-config [--config PATH]
    gpuserve-gateway hash-key [--generate] [--name NAME]   (key on stdin)

A bad config or keys file prints ONE line ``gpuserve-gateway: <what is wrong>`` on
stderr and exits 2; nothing starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import __version__
from .auth import generate_key, hash_key, load_keys
from .config import ENV_CONFIG, ConfigError, GatewayConfig, load_config
from .limits import ENV_FILE, InFlight
from .listener import ENV_SUPERVISOR, ListenerError, inherited_socket

EXIT_CONFIG = 2
EXIT_STARTUP = 3  # as uvicorn: the app or the socket failed before serving


def _fail(message: str) -> int:
    print(f"gpuserve-gateway: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _load(path: str | None) -> GatewayConfig:
    config = load_config(path)
    if config.auth.enabled and config.auth.keys_file:
        load_keys(config.auth.keys_file)
    return config


def _check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as err:
        return _fail(str(err))
    names = ", ".join(u.name for u in config.upstreams)
    print(
        f"gateway config OK: {len(config.upstreams)} upstream(s) ({names}), "
        f"auth {'on' if config.auth.enabled else 'off'}"
    )
    return 0


def _hash(args: argparse.Namespace) -> int:
    if args.generate:
        key = generate_key()
        print(f"key: {key}")
    else:
        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            return _fail("hash-key: no key on stdin (or use --generate)")
    digest = hash_key(key)
    if args.name:
        print(f'- name: {args.name}\n  sha256: "{digest}"')
    else:
        print(f"sha256: {digest}" if args.generate else digest)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .logs import setup_logging
    from .main import create_app

    try:
        config = _load(args.config)
        listener = inherited_socket()
    except (ConfigError, ListenerError) as err:
        return _fail(str(err))
    host = args.host or config.listen.host
    port = args.port or config.listen.port
    workers = args.workers or config.listen.workers
    setup_logging(config.logging)
    common = {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop when installed (uvicorn[standard])
        "http": "auto",  # httptools when installed
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": int(config.listen.keepalive_seconds),
        "timeout_graceful_shutdown": config.listen.graceful_shutdown_seconds,
        "lifespan": "on",
        "log_level": config.logging.level,
    }
    # Under systemd the .socket unit's socket (kept open across crashes); else bind here.
    sockets = [listener] if listener is not None else None
    if workers == 1:
        server = uvicorn.Server(uvicorn.Config(create_app(config), **common))
        server.run(sockets=sockets)
        return 0 if server.started else EXIT_STARTUP
    # Several workers: each re-reads the (already validated) file through the factory,
    # and metrics go through prometheus_client's multiprocess directory.
    path = args.config or os.environ.get(ENV_CONFIG)
    assert path is not None
    os.environ[ENV_CONFIG] = str(Path(path).resolve())
    mp_dir = config.metrics.multiproc_dir
    cleanup = mp_dir is None
    if mp_dir is None:
        mp_dir = tempfile.mkdtemp(prefix="gpuserve-gateway-metrics-")
    else:
        shutil.rmtree(mp_dir, ignore_errors=True)
        Path(mp_dir).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    # In-flight caps: one counters file for all workers (limits.py), fresh per start.
    # Rows: one per worker, plus room for restarted ones while a dead row is not reused.
    limits_dir = tempfile.mkdtemp(prefix="gpuserve-gateway-limits-")
    os.environ[ENV_FILE] = str(Path(limits_dir) / "in-flight")
    InFlight(config.limits, [], os.environ[ENV_FILE], rows=2 * workers + 2).prepare()
    # Workers end gracefully when this process dies (listener.exit_with_supervisor).
    os.environ[ENV_SUPERVISOR] = str(os.getpid())
    server_config = uvicorn.Config(
        "gpuserve_api.main:app_from_env", factory=True, workers=workers, **common
    )
    try:
        Multiprocess(server_config, sockets=sockets or [server_config.bind_socket()]).run()
    finally:
        shutil.rmtree(limits_dir, ignore_errors=True)
        if cleanup:
            shutil.rmtree(mp_dir, ignore_errors=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuserve-gateway",
        description="gpuserve inference gateway (OpenAI + Triton HTTP/gRPC, over vLLM).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help=f"gateway YAML file (default: ${ENV_CONFIG})")

    serve = sub.add_parser("serve", help="run the gateway (the default command)")
    config_arg(serve)
    serve.add_argument("--host", help="override listen.host")
    serve.add_argument("--port", type=int, help="override listen.port")
    serve.add_argument("--workers", type=int, help="override listen.workers")
    check = sub.add_parser("check-config", help="validate the config (and keys file); exit 0/2")
    config_arg(check)
    hk = sub.add_parser("hash-key", help="print the sha256 of the key read from stdin")
    hk.add_argument("--generate", action="store_true", help="make a new random key")
    hk.add_argument("--name", help="print a keys-file entry for this name")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "check-config": _check, "hash-key": _hash}[args.command]
    sys.exit(handler(args))
