"""nginx templates rendered by Ansible's own templating with the roles' defaults and vars
(issue 18): the port-80 redirect points at configured server names only, and the metrics
port checks the client's address before any location answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]


def render(role: str, template: str, **overrides: Any) -> str:
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for part in ("defaults/main.yml", "vars/main.yml"):
        path = ROOT / "roles" / role / part
        variables.update(loader.load_from_file(str(path), trusted_as_template=True) or {})
    variables.update(
        inventory_hostname="gpu1",
        ansible_managed="Ansible managed",
        ansible_facts={"fqdn": "GPU1.example.org", "default_ipv4": {"address": "10.0.0.9"}},
        groups={"monitoring": []},
        hostvars={},
        **overrides,
    )
    text = (ROOT / "roles" / role / "templates" / template).read_text()
    return Templar(loader=loader, variables=variables).template(trust_as_template(text))


def _redirect_server(conf: str) -> str:
    return conf[conf.index("map $host $gpuserve_redirect_host") : conf.index("listen 443")]


def test_the_redirect_goes_to_configured_names_only() -> None:
    block = _redirect_server(render("nginx_proxy", "nginx.conf.j2"))
    assert "default gpu1.example.org;" in block
    assert re.findall(r"^\s+(\S+) \1;$", block, re.M) == ["gpu1.example.org", "localhost"]
    assert "return 301 https://$gpuserve_redirect_host$request_uri;" in block
    assert "https://$host" not in block


def test_the_redirect_skips_wildcards_and_keeps_a_non_default_port() -> None:
    names = ["*.example.org", "api.example.org", "_"]
    block = _redirect_server(
        render(
            "nginx_proxy",
            "nginx.conf.j2",
            nginx_proxy_server_names=names,
            nginx_proxy_https_port=8443,
        ).replace("listen 8443", "listen 443")
    )
    assert "default api.example.org;" in block
    assert "return 301 https://$gpuserve_redirect_host:8443$request_uri;" in block


def test_the_metrics_port_checks_the_address_before_any_location() -> None:
    conf = render(
        "monitoring", "nginx-metrics.conf.j2", monitoring_allowed_addresses=["10.1.0.0/16"]
    )
    geo = re.search(r"geo \$gpuserve_metrics_client_allowed \{(.*?)\}", conf, re.S)
    assert geo
    assert re.findall(r"^\s+(\S+) 1;$", geo.group(1), re.M) == ["127.0.0.1", "::1", "10.1.0.0/16"]
    server = conf[conf.index("server {") :]
    assert server.index("return 403;") < server.index("location")
    assert "allow " not in conf


def test_the_vllm_locations_follow_the_instances_and_sit_in_the_allowlisted_server() -> None:
    instances = [
        {"name": "tiny", "uds": "/run/vllm/tiny-v2.sock"},
        {"name": "phi-2", "base_url": "http://127.0.0.1:8001/"},
    ]
    locations = render(
        "monitoring", "nginx-metrics-vllm.locations.j2", monitoring_vllm_instances=instances
    )
    assert re.findall(r"location = (\S+) \{\s*proxy_pass (\S+);", locations) == [
        ("/metrics/vllm/tiny", "http://unix:/run/vllm/tiny-v2.sock:/metrics"),
        ("/metrics/vllm/phi-2", "http://127.0.0.1:8001/metrics"),
    ]
    # An unknown model's path names the models served here (the allowlist answered first).
    fallback = re.search(r"location /metrics/vllm/ \{\s*return 404 \"(.*?)\\n\";", locations)
    assert fallback
    assert fallback.group(1) == "gpuserve metrics: the models here: tiny phi-2"
    server = render("monitoring", "nginx-metrics.conf.j2", monitoring_vllm_instances=instances)
    assert "include /etc/nginx/conf.d/gpuserve-metrics-vllm.locations;" in server
    assert server.index("return 403;") < server.index("include ")
    assert "/metrics/vllm/tiny" not in server  # only in the file serve.yml rewrites
