"""Print the version of the NCCL library the dynamic loader finds, as X.Y.Z.

Calls ncclGetVersion() through ctypes; needs no GPU. Usage: python3 nccl_version.py [lib]
(default libnccl.so.2). Exit 1 when the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import sys


def decode(code: int) -> str:
    """NCCL_VERSION_CODE to X.Y.Z (X*10000+Y*100+Z since 2.9, X*1000+Y*100+Z before)."""
    if code >= 20900:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def nccl_version(library: str = "libnccl.so.2") -> str:
    lib = ctypes.CDLL(library)
    code = ctypes.c_int(0)
    status = lib.ncclGetVersion(ctypes.byref(code))
    if status != 0:
        raise OSError(f"ncclGetVersion returned {status}")
    return decode(code.value)


def main(argv: list[str]) -> int:
    try:
        print(nccl_version(argv[1] if len(argv) > 1 else "libnccl.so.2"))
    except (OSError, AttributeError) as exc:
        print(f"cannot read the NCCL version: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
