"""Config and keys-file errors: one clear line, non-zero exit, nothing starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpuserve_api.auth import hash_key, load_keys
from gpuserve_api.cli import main
from gpuserve_api.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gateway.yml"
GOOD = {"upstreams": [{"name": "m", "base_url": "http://127.0.0.1:8100"}]}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "gateway.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_example_config_is_valid_and_documents_every_setting() -> None:
    config = load_config(EXAMPLE)
    assert config.upstreams[0].name == "phi-2"
    text = EXAMPLE.read_text()
    for section, model in config:
        if hasattr(type(model), "model_fields"):
            for name in type(model).model_fields:
                assert f"{name}:" in text, f"{section}.{name} missing from the example"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("upstreams: [\n  - name: m\n    base_url: x\n  bad", "not valid YAML at line"),
        ({}, "upstreams: required setting is missing"),
        (
            {**GOOD, "listen": {"port": 70000}},
            "listen.port: Input should be less than or equal to 65535 (got 70000)",
        ),
        (
            {**GOOD, "listen": {"prot": 1}},
            "listen.prot: unknown setting; allowed here: host, port, workers,",
        ),
        (
            {"upstreams": [{"name": "m", "base_url": "http://h:1", "timeouts": {"reed": 1}}]},
            "upstreams.0.timeouts.reed: unknown setting; allowed here: connect, read, write,",
        ),
        (
            {"upstreams": [{"name": "m", "base_url": "http://h:1/v1"}]},
            "upstreams.0.base_url: 'http://h:1/v1' is not allowed: use http://HOST:PORT",
        ),
        (
            {"upstreams": [{"name": "m", "base_url": "http://h:1", "uds": "/s"}]},
            "set exactly one of base_url",
        ),
        ({"upstreams": [{"name": "m", "uds": "rel.sock"}]}, "must be absolute"),
        (
            {
                "upstreams": [
                    {"name": "m", "base_url": "http://h:1"},
                    {"name": "n", "aliases": ["m"], "base_url": "http://h:2"},
                ]
            },
            "'m' is used twice",
        ),
        ({**GOOD, "auth": {"enabled": True}}, "auth.keys_file must be set"),
        (
            {**GOOD, "logging": {"format": "xml"}},
            "logging.format: Input should be 'json' or 'text' (got 'xml')",
        ),
        (
            {**GOOD, "limits": {"max_tokens": 0}},
            "limits.max_tokens: Input should be greater than or equal to 1",
        ),
        ("- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_gives_one_clear_message(tmp_path: Path, data: object, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, data))
    message = str(exc.value)
    assert needle in message
    assert "\n" not in message
    assert message.startswith("invalid gateway config")


def test_bad_config_refuses_to_start_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GOOD, "listen": {"workers": "many"}})
    run = subprocess.run(
        [sys.executable, "-m", "gpuserve_api", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "listen.workers: Input should be a valid integer" in lines[0]
    assert "Traceback" not in run.stderr


def test_missing_config_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GPUSERVE_API_CONFIG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["check-config"])
    assert exc.value.code == 2
    assert "pass --config PATH or set GPUSERVE_API_CONFIG" in capsys.readouterr().err
    monkeypatch.setenv("GPUSERVE_API_CONFIG", str(tmp_path / "nope.yml"))
    with pytest.raises(SystemExit) as exc:
        main(["check-config"])
    assert "cannot read gateway config" in capsys.readouterr().err


def test_check_config_validates_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yml"
    keys.write_text("keys:\n  - name: alice\n    sha256: abc123\n")
    path = _write(tmp_path, {**GOOD, "auth": {"enabled": True, "keys_file": str(keys)}})
    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--config", str(path)])
    assert exc.value.code == 2
    assert "keys[0].sha256 must be 64 lowercase hex digits" in capsys.readouterr().err
    keys.write_text(f"keys:\n  - name: alice\n    sha256: {hash_key('k')}\n")
    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--config", str(path)])
    assert exc.value.code == 0
    assert "gateway config OK: 1 upstream(s) (m), auth on" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("keys: {}\n", "expected a mapping with a list 'keys'"),
        ("keys:\n  - name: a b\n    sha256: " + "0" * 64 + "\n", "is not allowed"),
        (
            "keys:\n  - name: a\n    sha256: "
            + "a" * 64
            + "\n  - name: a\n    sha256: "
            + "b" * 64
            + "\n",
            "used twice",
        ),
        ("keys:\n  - name: a\n    sha256: " + "1" * 64 + "\n", "quote it"),
        ("keys:\n  - name: a\n    key: plain\n", "exactly 'name' and 'sha256'"),
        ("keys:\n  - name: a\n    sha256: " + hash_key("") + "\n", "empty key"),
    ],
)
def test_bad_keys_file(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "keys.yml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load_keys(str(path))


def test_hash_key_cli_matches_lookup(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    with pytest.raises(SystemExit):
        main(["hash-key", "--name", "carol"])
    entry = capsys.readouterr().out
    assert entry == f'- name: carol\n  sha256: "{hash_key("s3cret")}"\n'
    path = tmp_path / "keys.yml"
    path.write_text("keys:\n" + "".join("  " + line + "\n" for line in entry.splitlines()))
    store = load_keys(str(path))
    assert store.lookup("s3cret") == "carol"
    assert store.lookup("s3cret ") is None
    with pytest.raises(SystemExit):
        main(["hash-key", "--generate"])
    out = capsys.readouterr().out.splitlines()
    key = out[0].removeprefix("key: ")
    assert out[1] == f"sha256: {hash_key(key)}"


def test_check_config_refuses_https_upstreams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The one upstream client speaks plain HTTP: an https:// upstream is refused by
    # check-config (which the role runs before it installs a config), not at startup.
    path = _write(tmp_path, {"upstreams": [{"name": "m", "base_url": "https://vllm:8443"}]})
    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "upstreams.0.base_url: 'https://vllm:8443' is not allowed" in err
    assert "speaks plain HTTP only" in err
