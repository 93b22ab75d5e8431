"""nginx_proxy's own error answers use the gateway's error shape (issue 18).

Read from the template: every error nginx answers itself is the gateway's OpenAI-shaped
JSON with a string `code` (the gateway's name for that status where it has one), and the
status nginx sends is the one its body is written for (`error_page ... =NNN` where the
original status differs: a 502 used to leave as 502 with a body written for 503). The
serve scenario requests them through the real nginx.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "files/api"))
from gpuserve_api.protocol import STATUS_CODES  # noqa: E402

TEMPLATE = (ROOT / "roles/nginx_proxy/templates/nginx.conf.j2").read_text()
# The HTTPS server block only (the gRPC server answers gRPC errors).
HTTPS = TEMPLATE.split("    server {\n        listen {{ nginx_proxy_https_port }}", 1)[1].split(
    "{% if nginx_proxy_grpc_enabled"
)[0]


def targets() -> dict[str, tuple[int, dict]]:
    """Error location (named or URI) -> (status it returns, its JSON body)."""
    out = {}
    for m in re.finditer(r"location (?:= )?(\S+) \{(.*?)\n        \}", HTTPS, re.S):
        ret = re.search(r"return (\d{3}) '(.*)';", m.group(2))
        if ret and m.group(1) != "/":
            body = ret.group(2).replace("{{ nginx_proxy_client_max_body_size }}", "4m")
            out[m.group(1)] = (int(ret.group(1)), json.loads(body))
    return out


def error_pages() -> list[tuple[list[int], int | None, str]]:
    pages = []
    for m in re.finditer(r"^\s*error_page ([\d ]+?) (?:=(\d{3}) )?(\S+);", HTTPS, re.M):
        pages.append(([int(c) for c in m.group(1).split()], m.group(2), m.group(3)))
    return [(codes, int(eq) if eq else None, target) for codes, eq, target in pages]


def test_every_error_nginx_answers_has_the_gateways_shape_and_a_string_code() -> None:
    found = targets()
    assert len(found) >= 6, found
    for where, (status, body) in found.items():
        assert set(body) == {"error"}, where
        assert set(body["error"]) == {"message", "type", "param", "code"}, where
        assert isinstance(body["error"]["code"], str), where
        assert body["error"]["param"] is None
        if status in STATUS_CODES and where != "@gpuserve_497":
            assert body["error"]["code"] == STATUS_CODES[status], where


def test_the_status_sent_is_the_one_the_body_is_for() -> None:
    found = targets()
    covered = set()
    for codes, eq, target in error_pages():
        status = found[target][0]
        covered.update(codes)
        for code in codes:
            # Without `=`, nginx keeps the original status whatever `return` says.
            assert (eq or code) == status, (codes, eq, target)
    assert {400, 403, 413, 429, 497, 502, 503, 504} <= covered
