#!/usr/bin/env bash
# Deterministic user-space cost per request: run memtwin (or $SERVER_CMD) under
# callgrind, preload uninstrumented, instrument one workload only, and print
# instructions per request plus the top functions. Noise-free, unlike wall-clock
# numbers on the shared dev VMs (kernel time is not counted: see compare.py).
#
#   benches/callgrind.sh [loadgen args...]      e.g. --get-ratio 1 --pipeline 10
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-21458}
OUT=${OUT:-/tmp/memtwin-callgrind}
LG=$ROOT/target/release/memtwin-loadgen
SERVER_CMD=${SERVER_CMD:-"$ROOT/target/release/memtwin -l 127.0.0.1 -p $PORT -U 0 -t 1 -m 1024 -u root"}
mkdir -p "$OUT"
if ss -ltnH "sport = :$PORT" | grep -q .; then echo "port $PORT busy" >&2; exit 1; fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/cg.%p" $SERVER_CMD >"$OUT/server.log" 2>&1 &
VPID=$!
trap 'kill $VPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -ltnH "sport = :$PORT" | grep -q . && break; sleep 0.1; done
"$LG" --addr 127.0.0.1:$PORT --preload --conns 2 --keys 100000 >/dev/null
"$LG" --addr 127.0.0.1:$PORT --preload --conns 2 --keys 100000 --key-prefix s4k: --value-size 4096 >/dev/null
callgrind_control -i on $VPID >/dev/null 2>&1
RES=$("$LG" --addr 127.0.0.1:$PORT --conns ${CONNS:-10} --duration ${DURATION:-10} --warmup 0 --drain 5 "$@")
callgrind_control -i off $VPID >/dev/null 2>&1   # leave shutdown (freeing the table) out
kill $VPID; wait $VPID 2>/dev/null || true   # SIGTERM: graceful exit writes the profile
trap - EXIT
F=$OUT/cg.$VPID   # counts of the workload only (instrumented from after preload to its end)
OPS=$(echo "$RES" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ops"])')
IR=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "ops=$OPS Ir=$IR Ir/op=$((IR / OPS))  ($F)"
callgrind_annotate --inclusive=${INCLUSIVE:-no} "$F" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n 3,${TOP:-30}p | cut -c1-200
