"""Crashes under load (issue 18): kill -9 of the gateway's main process, then of its workers,
each during a stream through nginx, with a new request every 100 ms meanwhile.

Runs after test_serve.py (file order): it kills processes, and checks the stack is whole after.
Each run appends its measurements to .cache/molecule-logs/serve-crash.txt (docs/serving.md's
recovery times come from these lines).
"""

from __future__ import annotations

import json
import time

from test_serve import BASE, KEY, NGINX_DEFAULTS, PROJECT, ca, journal, props

UNIT = "gpuserve-gateway.service"
REPORT = PROJECT / ".cache" / "molecule-logs" / "serve-crash.txt"
PROBES = 50  # one every 100 ms: 5 s
KILL_AT = 10  # after the 10th probe (1 s into the probes, 2 s into the stream)
# 1500 tokens at the simulator's 2 ms each: the stream runs ~3 s or more, across the kill.
STREAM = {
    "model": "tiny",
    "prompt": "crash",
    "max_tokens": 1500,
    "ignore_eos": True,
    "stream": True,
}


def crash_run(host, name: str, kill: str) -> tuple[list[tuple[float, int, float]], str, str]:
    """Start a stream, fire PROBES requests 100 ms apart, run `kill` after KILL_AT of them.

    Returns the probes (start, HTTP status, seconds to answer), the stream's body and its
    X-Request-ID.
    """
    d = f"/tmp/crash-{name}"
    rid = f"testinfra-crash-{name}-{time.time_ns()}"
    curl = f"curl -s --http1.1 --cacert {ca(host)} -H 'Authorization: Bearer {KEY}'"
    script = f"""
set -u
rm -rf {d} && mkdir {d}
{curl} -N -H 'Content-Type: application/json' -H 'X-Request-ID: {rid}' -d '{json.dumps(STREAM)}' \\
  --max-time 60 -o {d}/stream '{BASE}/v1/completions' &
sleep 1
for i in $(seq 1 {PROBES}); do
  ( start=$(date +%s.%N)
    out=$({curl} --max-time 20 -o /dev/null -w '%{{http_code}} %{{time_total}}' '{BASE}/v1/models')
    echo "$start ${{out:-000 20}}" >> {d}/probes ) &
  if [ "$i" = {KILL_AT} ]; then {kill}; fi
  sleep 0.1
done
wait
"""
    host.run(script)
    probes = []
    for line in host.file(f"{d}/probes").content_string.splitlines():
        start, status, seconds = line.split()
        probes.append((float(start), int(status), float(seconds)))
    return sorted(probes), host.file(f"{d}/stream").content_string, rid


def longest_refusal(probes: list[tuple[float, int, float]]) -> float:
    """Seconds from the first to the last probe of the longest run of non-200 answers."""
    longest, run_start = 0.0, None
    for start, status, _ in probes:
        if status != 200:
            run_start = start if run_start is None else run_start
            longest = max(longest, start - run_start)
        else:
            run_start = None
    return longest


def wait_ready(host) -> None:
    deadline = time.time() + 60
    status = ""
    while time.time() < deadline:
        status = host.run(
            f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca(host)} '{BASE}/ready'"
        ).stdout
        if status == "200":
            return
        time.sleep(0.5)
    raise AssertionError(f"/ready did not come back ({status}): {journal(host, UNIT)}")


def access_log_entry(host, rid: str) -> dict:
    line = host.check_output(f"grep -h '{rid}' {NGINX_DEFAULTS['nginx_proxy_access_log']}")
    return json.loads(line.splitlines()[-1])


def report(host, name: str, probes: list[tuple[float, int, float]]) -> None:
    """One line per run in .cache/molecule-logs/serve-crash.txt (the docs' numbers)."""
    slowest = max(seconds for _, _, seconds in probes)
    refused = [status for _, status, _ in probes if status != 200]
    line = (
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {host.backend.get_hostname()} "
        f"crash {name}: {len(probes)} probes, {len(refused)} not 200 {sorted(set(refused))}, "
        f"longest refusal {longest_refusal(probes):.2f} s, slowest answer {slowest:.2f} s"
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def test_the_gateway_listens_on_a_socket_systemd_holds(host):
    sock = props(host, "gpuserve-gateway.socket", ["Listen", "ActiveState", "UnitFileState"])
    assert sock == {
        "Listen": "127.0.0.1:8080 (Stream)",
        "ActiveState": "active",
        "UnitFileState": "enabled",
    }
    service = props(host, UNIT, ["KillMode", "Requires", "TriggeredBy"])
    assert service["KillMode"] == "process"
    assert "gpuserve-gateway.socket" in service["Requires"].split()
    assert service["TriggeredBy"] == "gpuserve-gateway.socket"
    # The socket is open in systemd itself (pid 1), not only in the gateway's processes.
    assert "pid=1," in host.check_output("ss -Hltnp 'sport = :8080'")


def test_killing_the_gateway_main_process_refuses_nothing_and_its_streams_finish(host):
    before = props(host, UNIT, ["MainPID", "NRestarts"])
    main = before["MainPID"]
    workers = host.check_output(f"pgrep -P {main}").split()
    assert workers, "the gateway runs with workers (gateway_workers >= 2 by default)"
    probes, stream, rid = crash_run(host, "main", f"kill -9 {main}")
    report(host, "main", probes)
    assert len(probes) == PROBES
    # The socket is systemd's (gpuserve-gateway.socket): new connections wait for the new
    # gateway in its backlog instead of being refused.
    assert longest_refusal(probes) <= 1.0, probes
    # The orphaned workers stop accepting and finish what they relay.
    assert stream.rstrip().endswith("data: [DONE]"), stream[-300:]
    after = props(host, UNIT, ["MainPID", "NRestarts", "ActiveState"])
    assert after["ActiveState"] == "active"
    assert after["MainPID"] != main
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    entry = access_log_entry(host, rid)
    assert (entry["status"], entry["upstream_status"], entry["response_end"]) == (
        200,
        "200",
        "complete",
    ), entry
    # The old workers exit once their streams are done (they are not left behind).
    deadline = time.time() + 45
    while time.time() < deadline and host.run(f"ps -o pid= -p {','.join(workers)}").rc == 0:
        time.sleep(1)
    assert host.run(f"ps -o pid= -p {','.join(workers)}").rc != 0, "old workers still running"
    wait_ready(host)


def test_killing_the_workers_cuts_their_streams_and_refuses_nothing(host):
    main = props(host, UNIT, ["MainPID"])["MainPID"]
    error_log = NGINX_DEFAULTS["nginx_proxy_error_log"]
    cut = "upstream prematurely closed connection while reading upstream"
    cuts_before = int(host.run(f"grep -c '{cut}' {error_log}").stdout.strip() or 0)
    probes, stream, rid = crash_run(host, "workers", f"pkill -9 -P {main}")
    report(host, "workers", probes)
    assert len(probes) == PROBES
    # The main process keeps the socket and starts new workers.
    assert longest_refusal(probes) <= 1.0, probes
    assert props(host, UNIT, ["MainPID"])["MainPID"] == main
    # The stream's worker died: the client sees a stream without its end ...
    assert stream.startswith("data: "), stream[:300]
    assert "data: [DONE]" not in stream, stream[-300:]
    # ... nginx's error log records the cut, and so does its access log: status, upstream
    # status and completion still say 200/"OK" (the header went out), response_end says
    # "cut" (njs: roles/nginx_proxy/files/gpuserve_response_end.js).
    cuts_after = int(host.check_output(f"grep -c '{cut}' {error_log}"))
    assert cuts_after > cuts_before
    entry = access_log_entry(host, rid)
    assert (entry["status"], entry["upstream_status"], entry["response_end"]) == (
        200,
        "200",
        "cut",
    ), entry
    assert int(entry["upstream_bytes_received"]) > 0, entry
    wait_ready(host)
