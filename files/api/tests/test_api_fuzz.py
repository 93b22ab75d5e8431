"""Property-based fuzzing of the gateway's OpenAPI schema: bad input never gives a 5xx."""

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


def test_openapi_fuzz_never_5xx(fuzz_gateway: Proc) -> None:
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    ops = list(schema.get_all_operations())
    assert len(ops) >= 15
    failures: list[str] = []
    calls: list[int] = []

    def fuzz(op: schemathesis.APIOperation, mode: GenerationMode) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY_ALICE}"}
            resp = case.call(base_url=fuzz_gateway.url, timeout=10)
            calls.append(resp.status_code)
            if resp.status_code >= 500:
                failures.append(
                    f"{mode.value} {case.method} {case.formatted_path} -> "
                    f"{resp.status_code}: {resp.text[:200]}"
                )

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): only positive cases exist.
            assert mode is GenerationMode.NEGATIVE

    for result in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    assert len(calls) >= 80
    assert any(c == 200 for c in calls)
    assert any(400 <= c < 500 for c in calls)
    assert not failures, "\n".join(failures)
