"""In-flight caps (global and per API key), exact for the whole gateway.

Non-blocking: a request over a cap is refused at once (429 + Retry-After) instead of
queueing without bound. With several workers the counts live in one small file that
every worker maps (``MAP_SHARED``); each check-and-take runs under ``flock``, so a cap
means the same number whatever ``listen.workers`` is. Each worker owns one row of
counters (its pid, its total, one count per key); a cap compares against the sum of
all rows. A worker that dies (even SIGKILL) leaves its row behind: rows whose pid is
gone are zeroed when a new worker takes a row and before any request is refused, so
a crash never holds slots for longer than it takes to matter. One worker: the same
counters in process memory, no file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence

from .auth import KeyStore
from .config import ConfigError, Limits

# Set by ``gpuserve-gateway serve`` for its workers: the file that holds the counters.
ENV_FILE = "GPUSERVE_GATEWAY_LIMITS_FILE"
ANONYMOUS = "anonymous"
# Distinct key names the counters can hold over one gateway start (anonymous included).
KEY_SLOTS = 4096
_Q = struct.Struct("q")
_WORD = _Q.size


def key_names(keys: KeyStore | None) -> list[str]:
    """The names that take in-flight slots besides ``anonymous`` (auth off: none)."""
    return [name for name, _ in keys.entries] if keys is not None else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InFlight:
    """Counts requests in flight, per key and in total, across the gateway's workers.

    ``keys``: every key name that can take a slot (``anonymous`` is always one).
    ``path``: the shared file (None: this process only). ``rows``: how many workers
    may hold a row at once (dead workers' rows are reused); used by ``prepare``.

    File layout, in 8-byte words: a table of ``KEY_SLOTS`` key-name hashes (0 = free),
    then one row per worker: pid, total, one count per table slot. The layout does not
    depend on the keys file, so workers restarted by SIGHUP with another keys file
    (new keys take free slots) share the file with the ones still running.
    """

    def __init__(
        self, limits: Limits, keys: Sequence[str], path: str | None = None, rows: int = 1
    ) -> None:
        self.max_total = limits.max_in_flight
        self.max_per_key = limits.max_in_flight_per_key
        self.names = list(dict.fromkeys([ANONYMOUS, *keys]))
        if len(self.names) > KEY_SLOTS:
            raise ConfigError(
                f"{len(self.names) - 1} API keys: the in-flight counters hold at most "
                f"{KEY_SLOTS - 1}"
            )
        self.columns: dict[str, int] = {}
        self.row_words = 2 + KEY_SLOTS
        self.rows = rows if path is not None else 1
        self.path = path
        self.fd: int | None = None
        self.buf: mmap.mmap | bytearray = bytearray(self._size(self.rows))
        self.row = 0
        self.pid = os.getpid()

    @staticmethod
    def _size(rows: int) -> int:
        return (KEY_SLOTS + rows * (2 + KEY_SLOTS)) * _WORD

    # --- lifecycle -------------------------------------------------------------------
    def prepare(self) -> None:
        """Write the zeroed counters file, ``rows`` rows (the master, before workers)."""
        assert self.path is not None
        with open(self.path, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(bytes(self._size(self.rows)))

    def open(self) -> None:
        """Map the shared file, take a row (a free one, or one a dead worker left) and
        the key columns. Runs in the worker (the app's lifespan); the file's size gives
        the rows. One process (no file): only the key columns."""
        if self.path is None:
            self._assign_columns()
            return
        self.fd = os.open(self.path, os.O_RDWR)
        with self._locked():
            size = os.fstat(self.fd).st_size
            row_bytes = self.row_words * _WORD
            self.rows = (size - KEY_SLOTS * _WORD) // row_bytes
            if self.rows < 1 or self._size(self.rows) != size:
                raise RuntimeError(
                    f"in-flight counters file {self.path} has {size} bytes, not a key table "
                    f"and whole rows of {row_bytes}"
                )
            self.buf = mmap.mmap(self.fd, size)
            self.pid = os.getpid()
            self._assign_columns()
            for row in range(self.rows):
                pid = self._get(row, 0)
                if pid == 0 or not _alive(pid):
                    self._clear(row)
                    self._set(row, 0, self.pid)
                    self.row = row
                    return
        raise RuntimeError(
            f"in-flight counters file {self.path}: all {self.rows} rows are held by live "
            "processes (more gateway workers than listen.workers?)"
        )

    def _assign_columns(self) -> None:
        """Find each key's slot in the table by its name's hash, or take a free one."""
        table = [int(v) for v in struct.unpack_from(f"{KEY_SLOTS}q", self.buf, 0)]
        for name in self.names:
            digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
            h = int.from_bytes(digest, "big", signed=True) or 1
            if h in table:
                slot = table.index(h)
            elif 0 in table:
                slot = table.index(0)
                table[slot] = h
                _Q.pack_into(self.buf, slot * _WORD, h)
            else:
                raise RuntimeError(
                    f"in-flight counters file {self.path}: all {KEY_SLOTS} key slots are "
                    "used (restart the gateway to start a fresh file)"
                )
            self.columns[name] = 2 + slot

    def close(self) -> None:
        """Give the row back (the app's lifespan end)."""
        if self.fd is None:
            return
        with self._locked():
            self._clear(self.row)
        assert isinstance(self.buf, mmap.mmap)
        self.buf.close()
        os.close(self.fd)
        self.fd = None

    # --- the request path ----------------------------------------------------------
    def try_acquire(self, key: str) -> str | None:
        """Take a slot; return None, or the name of the cap that refused it."""
        col = self.columns[key]
        with self._locked():
            refused = self._refusal(col)
            if refused and self.path is not None and self._reap():
                refused = self._refusal(col)
            if refused:
                return refused
            self._add(self.row, 1, 1)
            self._add(self.row, col, 1)
        return None

    def release(self, key: str) -> None:
        col = self.columns[key]
        with self._locked():
            self._add(self.row, 1, -1)
            self._add(self.row, col, -1)

    def counts(self, key: str) -> tuple[int, int]:
        """(total, this key's) in flight over every worker."""
        col = self.columns[key]
        with self._locked():
            return self._sum(1), self._sum(col)

    # --- internals -----------------------------------------------------------------
    def _refusal(self, col: int) -> str | None:
        if self.max_total and self._sum(1) >= self.max_total:
            return "limits.max_in_flight"
        if self.max_per_key and self._sum(col) >= self.max_per_key:
            return "limits.max_in_flight_per_key"
        return None

    def _reap(self) -> bool:
        """Zero the rows of workers that died; True if any slot came free."""
        freed = False
        for row in range(self.rows):
            pid = self._get(row, 0)
            if pid and row != self.row and not _alive(pid):
                freed = freed or self._get(row, 1) != 0
                self._clear(row)
        return freed

    def _sum(self, col: int) -> int:
        return sum(self._get(row, col) for row in range(self.rows))

    def _offset(self, row: int, col: int) -> int:
        return (KEY_SLOTS + row * self.row_words + col) * _WORD

    def _get(self, row: int, col: int) -> int:
        return int(_Q.unpack_from(self.buf, self._offset(row, col))[0])

    def _set(self, row: int, col: int, value: int) -> None:
        _Q.pack_into(self.buf, self._offset(row, col), value)

    def _add(self, row: int, col: int, delta: int) -> None:
        self._set(row, col, self._get(row, col) + delta)

    def _clear(self, row: int) -> None:
        start = self._offset(row, 0)
        self.buf[start : start + self.row_words * _WORD] = bytes(self.row_words * _WORD)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.fd is None:
            yield
            return
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
