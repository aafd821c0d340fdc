#!/usr/bin/env bash
# flood.sh — memory and latency under overload, on a real 3-node kvd
# cluster (3 groups x 3 replicas) on loopback:
#   1. WRITERS writers (default 200) of 1 MiB values for DURATION (15s),
#      each node's peak resident memory (VmHWM) and its split into the
#      process's own memory (RssAnon) and mapped files (RssFile), sampled
#      every second;
#   2. SMALL_CLIENTS writers (default 1000) of 256-byte values: throughput
#      and latency percentiles.
# Needs Linux (/proc). Env: DURATION, WRITERS, SMALL_CLIENTS, BASE_PORT
# (default 27600), BIN (default ./bin: kvd and kvbench).
set -euo pipefail
DURATION=${DURATION:-15s}
WRITERS=${WRITERS:-200}
SMALL_CLIENTS=${SMALL_CLIENTS:-1000}
BASE_PORT=${BASE_PORT:-27600}
BIN=${BIN:-./bin}
[ -x "$BIN/kvd" ] && [ -x "$BIN/kvbench" ] || { echo "build first: make build" >&2; exit 2; }
work=$(mktemp -d /tmp/kvd-flood.XXXXXX)
. "$(dirname "$0")/cluster.sh"
field() { awk -v k="$2:" '$1 == k {print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "== $WRITERS writers of 1 MiB values for $DURATION (3 nodes, 3 groups)"
start_cluster
"$BIN/kvbench" --endpoints "$eps" --clients "$WRITERS" --value-size 1048576 --keys 2000 --duration "$DURATION" \
  --warmup 0s --quiet --json put >"$work/large.json" 2>"$work/large.err" &
bench=$!
declare -A hwm anon file
while kill -0 "$bench" 2>/dev/null; do
  for i in 0 1 2; do
    p=${pids[$i]}
    a=$(field "$p" RssAnon); f=$(field "$p" RssFile); h=$(field "$p" VmHWM)
    (( a > ${anon[$i]:-0} )) && anon[$i]=$a
    (( f > ${file[$i]:-0} )) && file[$i]=$f
    hwm[$i]=$h
  done
  sleep 1
done
wait "$bench" || true
for i in 0 1 2; do
  alive=yes; kill -0 "${pids[$i]}" 2>/dev/null || alive=NO
  echo "n$((i+1)): peak resident ${hwm[$i]} MiB (largest samples: own ${anon[$i]} MiB, mapped files ${file[$i]} MiB); alive: $alive"
done
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("puts: %d ok (%.0f/s), %d errors, p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (r["ops"], r["ops_per_sec"], r.get("errors",0), r["p50_ms"], r["p99_ms"], r["max_ms"]))' "$work/large.json" \
  || cat "$work/large.json" "$work/large.err"
stop_cluster

echo "== $SMALL_CLIENTS writers of 256-byte values for $DURATION"
start_cluster
"$BIN/kvbench" --endpoints "$eps" --clients "$SMALL_CLIENTS" --value-size 256 --duration "$DURATION" --warmup 2s --quiet --json put >"$work/small.json" 2>"$work/small.err" || true
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("puts: %d ok (%.0f/s), %d errors, p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms" % (r["ops"], r["ops_per_sec"], r.get("errors",0), r["p50_ms"], r["p99_ms"], r.get("p999_ms",0), r["max_ms"]))' "$work/small.json" \
  || cat "$work/small.json" "$work/small.err"
for i in 0 1 2; do echo "n$((i+1)): peak resident $(field "${pids[$i]}" VmHWM) MiB"; done
