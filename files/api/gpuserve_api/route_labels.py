"""The bounded ``route`` label of metrics and access logs, declared on each endpoint.

``@route_label("/v2/generate")`` under the router decorator names the label of that
endpoint; the middleware finds the route a request matches (as the router will) and
reads it. Requests that match no labelled route are labelled ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "gateway_route_label"
UNMATCHED = "other"


def route_label(label: str) -> Callable[[F], F]:
    """Mark an endpoint function with its metric label (a constant, never the raw path)."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTR, label)
        return endpoint

    return mark


def label_for(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The label of the route that serves ``scope``: the first full match, else the first
    partial one (wrong method: 405), as Starlette's router picks them."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(getattr(route, "endpoint", None), _ATTR, UNMATCHED)
        if match is Match.PARTIAL and partial is None:
            partial = route
    if partial is not None:
        return getattr(getattr(partial, "endpoint", None), _ATTR, UNMATCHED)
    return UNMATCHED
