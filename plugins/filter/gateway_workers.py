"""The gateway's default worker count, from the host's cores and the measured relay rate.

Each uvicorn worker is one process on one core. The gateway must relay the engine's peak
stream (one SSE chunk per token, as vLLM streams) without any worker running near
saturation, and must leave most cores to vLLM (API server, engine core, tokenizer).
docs/performance.md ("Sizing gateway_workers") has the measured per-core rate.
"""

from __future__ import annotations

import math

DOCUMENTATION = """
name: gateway_workers
short_description: Default number of gateway worker processes for a host
description:
  - Returns how many uvicorn workers the gateway needs to relay O(peak_tokens_per_s)
    streamed tokens per second (one chunk per token) when one worker relays
    O(chunks_per_core_s) chunks per CPU second and is planned at O(utilization) of a core.
  - The result is at least O(minimum) (2 lets a config change reload without dropped
    connections) and at most half the host's cores (the rest is vLLM's), never more than 64.
positional: _input, peak_tokens_per_s, chunks_per_core_s
options:
  _input:
    description: The host's CPU cores (for example ansible_facts.processor_vcpus).
    type: int
    required: true
  peak_tokens_per_s:
    description: Streamed tokens per second the host's engines produce at most.
    type: int
    required: true
  chunks_per_core_s:
    description: Chunks one gateway worker relays per CPU second (measured, docs/performance.md).
    type: int
    required: true
  utilization:
    description: Share of a core one worker is planned to use at the peak (0 < utilization <= 1).
    type: float
    default: 0.5
  minimum:
    description: Fewest workers (1..64).
    type: int
    default: 2
"""

MAX_WORKERS = 64


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"gateway_workers: {name} must be an integer, got {value!r}")
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError(f"gateway_workers: {name} must be an integer, got {value!r}") from None
    if number < low:
        raise ValueError(f"gateway_workers: {name} must be at least {low}, got {number}")
    return number


def gateway_workers(
    cores: object,
    peak_tokens_per_s: object,
    chunks_per_core_s: object,
    utilization: float = 0.5,
    minimum: object = 2,
) -> int:
    """``ceil(peak / (rate * utilization))`` workers, within [minimum, max(minimum, cores // 2)]
    and at most 64. Raises ValueError for values that cannot size anything."""
    n_cores = _int("cores", cores, 1)
    peak = _int("peak_tokens_per_s", peak_tokens_per_s, 0)
    rate = _int("chunks_per_core_s", chunks_per_core_s, 1)
    low = _int("minimum", minimum, 1)
    share = float(utilization)
    if not 0 < share <= 1:
        raise ValueError(f"gateway_workers: utilization must be in (0, 1], got {share}")
    if low > MAX_WORKERS:
        raise ValueError(f"gateway_workers: minimum must be at most {MAX_WORKERS}, got {low}")
    needed = math.ceil(peak / (rate * share))
    cap = min(MAX_WORKERS, max(low, n_cores // 2))
    return max(low, min(needed, cap))


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"gateway_workers": gateway_workers}
