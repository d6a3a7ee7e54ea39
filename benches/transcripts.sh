#!/usr/bin/env bash
# Run the protocol transcript suites against this worktree's release build on a
# port in the perf range (behaviour must not change with optimizations).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-21457}
PY=${PY:-/work/main/.venv/bin/python}
BIN=${MEMTWIN_BIN:-$ROOT/target/release/memtwin}
if ss -ltnH "sport = :$PORT" | grep -q .; then echo "port $PORT busy" >&2; exit 1; fi
ARGS=(-l 127.0.0.1 -p "$PORT" -U 0)
[ "$(id -u)" = 0 ] && ARGS+=(-u root)
"$BIN" "${ARGS[@]}" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 50); do ss -ltnpH "sport = :$PORT" | grep -q "pid=$PID," && break; sleep 0.1; done
cd "$ROOT/protocol-tests"
"$PY" -m pytest -q -p no:cacheprovider --addr 127.0.0.1:$PORT --server-bin "$BIN" \
    --target memtwin ${@:-test_text_*.py test_binary.py test_meta.py} 2>&1 | tail -15
