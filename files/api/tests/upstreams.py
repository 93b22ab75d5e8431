"""Test fixtures: small real upstream apps served by uvicorn in a thread of the test.

``RecordingUpstream`` records the JSON bodies the gateway sends (to check what reaches
the model) and answers in vLLM's shapes. ``ErrorClosingUpstream`` raises an unhandled
exception on request: Starlette answers 500 and uvicorn then closes the kept-alive
connection, as vLLM's own server does after an engine error.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from gpuserve_sim.procs import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn (httptools) on loopback; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="critical", http="httptools", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"upstream-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fixture upstream did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-fixture",
        "object": "text_completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class RecordingUpstream:
    """Records every JSON body; ``/v1/models`` lists ``contexts`` (id -> max_model_len)."""

    def __init__(self, contexts: dict[str, int]) -> None:
        self.contexts = contexts
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.app = Starlette(
            routes=[
                Route("/health", lambda _r: Response(status_code=200)),
                Route("/v1/models", self.models),
                Route("/v1/{path:path}", self.generate, methods=["POST"]),
            ]
        )

    async def models(self, _request: Request) -> Response:
        cards = [
            {"id": m, "object": "model", "owned_by": "vllm", "max_model_len": n}
            for m, n in self.contexts.items()
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def generate(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append((request.url.path, body))
        return JSONResponse(_completion(body))

    def last(self) -> tuple[str, dict[str, Any]]:
        return self.bodies[-1]


def error_closing_app() -> Starlette:
    """``prompt: "boom"`` raises (500, then uvicorn closes the connection); else 200."""

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        if body.get("prompt") == "boom":
            raise RuntimeError("fixture: simulated engine failure")
        return JSONResponse(_completion(body))

    return Starlette(
        routes=[
            Route("/health", lambda _r: Response(status_code=200)),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )
