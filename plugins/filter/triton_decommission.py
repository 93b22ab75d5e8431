"""Filters of the triton_decommission role: nginx listen directives for Triton's old ports."""

from __future__ import annotations

from typing import Any, ClassVar


def listen(port: dict[str, Any]) -> str:
    """A published port ({host_ip, host_port}) as an nginx listen address."""
    ip = port.get("host_ip") or ""
    number = int(port["host_port"])
    if ip in ("", "0.0.0.0"):
        return str(number)
    if ":" in ip:
        return f"[{ip}]:{number}"
    return f"{ip}:{number}"


def listen_host(directive: str) -> str:
    """The address to probe for a listen directive (loopback for a wildcard)."""
    host, _, _port = str(directive).rpartition(":")
    host = host.strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0", "*", "::") else host


def listen_port(directive: str) -> int:
    """The port of a listen directive."""
    return int(str(directive).rpartition(":")[2])


class FilterModule:
    filter_map: ClassVar[dict[str, Any]] = {
        "triton_decommission_listen": listen,
        "triton_decommission_listen_host": listen_host,
        "triton_decommission_listen_port": listen_port,
    }

    def filters(self) -> dict[str, Any]:
        return self.filter_map
