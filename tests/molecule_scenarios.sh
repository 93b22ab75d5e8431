#!/usr/bin/env bash
# Run Molecule scenarios, MOLECULE_JOBS at a time (default 2): `make molecule` calls this.
# Scenarios never share a container (platform names carry the scenario's name); what they
# share are the cached test fixtures that several prepare steps build, so those are built
# once here, before any scenario starts, and the prepares then find them cached.
# Each scenario logs to $MOLECULE_LOG_DIR/<name>.log; a failed one's tail is printed.
# Usage: tests/molecule_scenarios.sh SCENARIO...
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${MOLECULE_JOBS:-2}"
logs="${MOLECULE_LOG_DIR:-$PWD/.cache/molecule-logs}"
mkdir -p "$logs"
[[ $# -gt 0 ]] || { echo "usage: $0 SCENARIO..." >&2; exit 2; }
for s in "$@"; do
  [[ -f "molecule/$s/molecule.yml" ]] || { echo "no Molecule scenario '$s' (molecule/$s/molecule.yml)" >&2; exit 2; }
done

tests/fixtures/api_wheelhouse/build.sh
tests/fixtures/tiny_model/build.sh
# The vLLM sdist (vllm_build's fixture, container_images's fixture wheel) before two prepares race.
SDIST_ONLY=1 tests/fixtures/vllm_build/prepare.sh

run_scenario() {
  local s="$1" log="$logs/$1.log" start
  start=$(date +%s)
  echo "=== molecule test -s $s (log: $log)"
  if molecule test -s "$s" >"$log" 2>&1; then
    echo "=== molecule scenario $s passed in $(($(date +%s) - start)) s:" \
      "$(grep -aoE '[0-9]+ passed[^=]*' "$log" | tail -n 1)"
  else
    echo "=== molecule scenario $s FAILED after $(($(date +%s) - start)) s; last lines of $log:"
    tail -n 200 "$log"
    return 1
  fi
}
export -f run_scenario
export logs
start=$(date +%s)
if printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_scenario "$1"' _ {}; then
  echo "=== molecule: $# scenarios passed in $(($(date +%s) - start)) s ($jobs at a time)"
else
  echo "=== molecule: a scenario FAILED (see above)"
  exit 1
fi
