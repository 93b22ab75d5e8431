"""One APIRouter per file: openai (/v1), triton (/v2), health, metrics.

Routers stay thin: read the request, call the serving layer, answer through
``responses``. The OpenAPI helpers below are shared by the routers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import BaseRoute, Match

from ..protocol import GatewayError


def error_responses(
    model: type[BaseModel], descriptions: dict[int, str]
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=``: each status with its error body model."""
    return {code: {"model": model, "description": desc} for code, desc in descriptions.items()}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``openapi_extra=`` for a JSON body the handler reads itself (the hot path
    parses raw bytes once; ``main`` registers the model's schema)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def refuse_other_methods(request: Request, routes: Sequence[BaseRoute]) -> None:
    """405 with ``Allow`` when the path belongs to one of ``routes`` declared for other
    methods (a catch-all route would otherwise take it)."""
    allowed: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        if match is Match.PARTIAL:
            allowed |= getattr(route, "methods", None) or set()
    if allowed:
        raise GatewayError(
            405,
            f"Method Not Allowed: {request.method} (allowed: {', '.join(sorted(allowed))})",
            headers={"Allow": ", ".join(sorted(allowed))},
        )
