#!/usr/bin/env bash
# Run every benchmark with its default sizes, then repeat their one-line summaries together.
# Extra arguments (e.g. --dir /var/lib/dock-agent-bench) are passed to every script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run_all.sh: $PY not found; run scripts/setup first" >&2; exit 1; }
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
status=0
for name in scan_latency write_path startup sync_drain workflow_latency status_page decode_latency; do
    echo "=== $PY bench/$name.py $*"
    out=$(mktemp)
    "$PY" "bench/$name.py" "$@" | tee "$out"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        tail -n 1 "$out" >>"$summary"
    else
        echo "$name: FAILED (exit status $rc)" | tee -a "$summary" >&2
        status=1
    fi
    rm -f "$out"
    echo
done
echo "=== summary"
cat "$summary"
exit "$status"
