"""Property-based fuzzing of the gateway against its own OpenAPI schema, every check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from api_env import KEY_ALICE, MODEL
from gpuserve_sim.procs import Proc, start_gateway, start_sim
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


@pytest.fixture(scope="module")
def fuzz_gateway(workdir: Path, keys_file: Path) -> Iterator[Proc]:
    sim = start_sim(workdir, model=MODEL, ttft_ms=0, itl_ms=0, max_model_len=256)
    gw = start_gateway(
        workdir,
        {
            "upstreams": [{"name": MODEL, "base_url": sim.url}],
            "auth": {"enabled": True, "keys_file": str(keys_file)},
            "limits": {"max_tokens": 32, "max_n": 2, "max_prompt_chars": 4000},
        },
        ready_path="/ready",
    )
    yield gw
    gw.stop()
    sim.stop()


# Examples per operation and generation mode: with both modes, 200 per operation that
# takes input. About a minute on 2 idle cores (docs/api.md, "Schema and fuzzing").
EXAMPLES = 100


def _negatable(op: schemathesis.APIOperation) -> bool:
    """Whether invalid input exists: a body, or a parameter more constrained than any
    string (Hypothesis would search in vain for an invalid plain-string path segment)."""
    raw = op.definition.raw
    plain = {"type": "string"}
    return "requestBody" in raw or any(
        {k: v for k, v in p.get("schema", {}).items() if k != "title"} != plain
        for p in raw.get("parameters", [])
    )


def test_openapi_fuzz_all_checks(fuzz_gateway: Proc) -> None:
    """Every schemathesis check (no 5xx, status codes, content types and bodies as
    documented, invalid input refused, valid input accepted, auth not ignored)."""
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 15
    failures: dict[str, str] = {}
    calls: list[int] = []
    auth = {"Authorization": f"Bearer {KEY_ALICE}"}

    def fuzz(op: schemathesis.APIOperation, mode: GenerationMode) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            try:
                resp = case.call_and_validate(base_url=fuzz_gateway.url, headers=auth, timeout=10)
                calls.append(resp.status_code)
            except (AssertionError, BaseExceptionGroup) as err:
                # Recorded, not raised: shrinking would cost minutes; one example per kind.
                calls.append(0)
                for sub in getattr(err, "exceptions", [err]):
                    title = getattr(sub, "title", type(sub).__name__)
                    key = f"{mode.value} {op.method.upper()} {op.path}: {title}"
                    failures.setdefault(key, str(sub)[:800])

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid: only positive cases exist.
            assert mode is GenerationMode.NEGATIVE

    for op in ops:
        fuzz(op, GenerationMode.POSITIVE)
        if _negatable(op):
            fuzz(op, GenerationMode.NEGATIVE)
    assert len(calls) >= 1500
    assert any(c == 200 for c in calls)
    assert any(400 <= c < 500 for c in calls)
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
