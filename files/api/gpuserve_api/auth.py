"""API keys: a YAML file of named sha256 hashes, checked in constant time.

Key file format (written by the Ansible role, mode 0640)::

    keys:
      - name: alice            # letters, digits, ._- ; appears in logs and metrics
        sha256: <64 lowercase hex digits of sha256(key)>

Clients send ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The stored form of an API key: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return "gsk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyStore:
    """Named key hashes; ``lookup`` compares against every entry in constant time."""

    entries: tuple[tuple[str, bytes], ...]

    def lookup(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for name, stored in self.entries:
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found


def load_keys(path: str) -> KeyStore:
    """Load and validate the keys file; raise ConfigError with one clear message."""
    where = f"API keys file {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {where}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f"{where}: expected a mapping with a list 'keys' of {{name, sha256}}")
    entries: list[tuple[str, bytes]] = []
    names: set[str] = set()
    for i, item in enumerate(data["keys"]):
        if not isinstance(item, dict) or set(item) - {"name", "sha256"}:
            raise ConfigError(f"{where}: keys[{i}] must have exactly 'name' and 'sha256'")
        name, digest = item.get("name"), item.get("sha256")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{where}: keys[{i}].name {name!r} is not allowed (1-64 of A-Z a-z 0-9 . _ -)"
            )
        if name in names:
            raise ConfigError(f"{where}: keys[{i}].name {name!r} is used twice")
        if isinstance(digest, int):
            raise ConfigError(
                f'{where}: keys[{i}].sha256 was read as a number by YAML; quote it (sha256: "...")'
            )
        if not isinstance(digest, str) or not _HEX.match(digest):
            raise ConfigError(
                f"{where}: keys[{i}].sha256 must be 64 lowercase hex digits "
                "(`gpuserve-gateway hash-key` prints it)"
            )
        if digest == hash_key(""):
            raise ConfigError(f"{where}: keys[{i}] is the hash of an empty key")
        names.add(name)
        entries.append((name, bytes.fromhex(digest)))
    return KeyStore(tuple(entries))


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
