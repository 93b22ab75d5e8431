#!/usr/bin/env python3
"""Print the fingerprints of the OpenPGP primary keys in a keyring or a keyring .deb as JSON.

Lets the role check the CUDA repository key before trusting it, without gpg on the host:
a v4 fingerprint is SHA-1 over 0x99, a 2-byte length and the public-key packet body.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

PUBLIC_KEY_TAG = 6


def dearmor(data: bytes) -> bytes:
    """Binary packets from ASCII armor; binary input is returned unchanged."""
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return data
    body: list[bytes] = []
    in_body = False
    for raw in data.splitlines():
        line = raw.strip()
        if line.startswith(b"-----BEGIN"):
            in_body = False
            continue
        if line.startswith(b"-----END"):
            break
        if not in_body:
            in_body = line == b""
            continue
        if not line.startswith(b"="):
            body.append(line)
    return base64.b64decode(b"".join(body))


def packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of every packet; supports old and new packet formats."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        header = data[pos]
        if not header & 0x80:
            raise ValueError(f"not an OpenPGP packet at offset {pos}")
        if header & 0x40:  # new format
            tag = header & 0x3F
            first = data[pos + 1]
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 2 : pos + 6], "big"), pos + 6
            else:
                raise ValueError("partial body lengths are not used in keyrings")
        else:  # old format
            tag = (header >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
            if size is None:
                raise ValueError("indeterminate packet length")
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
            pos += 1 + size
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def fingerprints(data: bytes) -> list[str]:
    """v4 fingerprints of the primary public keys in `data` (armored or binary)."""
    result = []
    for tag, body in packets(dearmor(data)):
        if tag == PUBLIC_KEY_TAG and body[:1] == b"\x04":
            digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body)
            result.append(digest.hexdigest().upper())
    return result


def keyrings_in_deb(path: Path) -> list[bytes]:
    """Contents of the usr/share/keyrings/ members of a .deb."""
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(path)], check=True, capture_output=True
    ).stdout
    found = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            if member.isfile() and "usr/share/keyrings/" in member.name:
                handle = tar.extractfile(member)
                if handle is not None:
                    found.append(handle.read())
    return found


def main(argv: list[str]) -> int:
    """Usage: openpgp_fingerprints.py PATH (a keyring, armored or binary, or a .deb)."""
    path = Path(argv[1])
    try:
        blobs = keyrings_in_deb(path) if path.suffix == ".deb" else [path.read_bytes()]
        result = [fpr for blob in blobs for fpr in fingerprints(blob)]
    except (OSError, ValueError, subprocess.CalledProcessError, tarfile.TarError) as exc:
        print(f"cannot read OpenPGP keys from {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"fingerprints": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
