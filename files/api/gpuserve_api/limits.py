"""In-flight caps (global and per API key), per worker process.

Non-blocking: a request over a cap is refused at once (429 + Retry-After) instead of
queueing without bound. Single event loop per worker, so no lock is needed.
"""

from __future__ import annotations

from .config import Limits


class InFlight:
    def __init__(self, limits: Limits) -> None:
        self.max_total = limits.max_in_flight
        self.max_per_key = limits.max_in_flight_per_key
        self.total = 0
        self.per_key: dict[str, int] = {}

    def try_acquire(self, key: str) -> str | None:
        """Take a slot; return None, or the name of the cap that refused it."""
        if self.max_total and self.total >= self.max_total:
            return "limits.max_in_flight"
        current = self.per_key.get(key, 0)
        if self.max_per_key and current >= self.max_per_key:
            return "limits.max_in_flight_per_key"
        self.total += 1
        self.per_key[key] = current + 1
        return None

    def release(self, key: str) -> None:
        self.total -= 1
        left = self.per_key[key] - 1
        if left:
            self.per_key[key] = left
        else:
            del self.per_key[key]
