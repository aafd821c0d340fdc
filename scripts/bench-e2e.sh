#!/usr/bin/env bash
# bench-e2e.sh — a short end-to-end run of kvbench against a real 3-node
# kvd cluster (3 groups x 3 replicas) on loopback: puts, follower and stale
# gets, and cross-group vs one-group transfers, with ratios measured in the
# same run. Env: DURATION (per workload, default 5s), BASE_PORT (default
# 27400: nodes use BASE_PORT+10*i and +1), BIN (default ./bin).
set -euo pipefail
DURATION=${DURATION:-5s}
BASE_PORT=${BASE_PORT:-27400}
BIN=${BIN:-./bin}
[ -x "$BIN/kvd" ] && [ -x "$BIN/kvbench" ] || { echo "build first: make build" >&2; exit 2; }
work=$(mktemp -d /tmp/kvd-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
nodes=""; eps=""
for i in 1 2 3; do
  h=$((BASE_PORT + 10*i)); r=$((h + 1))
  port_free "$h" && port_free "$r" || { echo "port $h or $r is in use (set BASE_PORT)" >&2; exit 2; }
  nodes+="${nodes:+,}{\"id\":\"n$i\",\"http\":\"127.0.0.1:$h\",\"raft\":\"127.0.0.1:$r\"}"
  eps+="${eps:+,}http://127.0.0.1:$h"
done
echo "{\"nodes\":[$nodes],\"groups\":3,\"replicas\":3}" >"$work/cluster.json"
for i in 1 2 3; do
  h=$((BASE_PORT + 10*i))
  "$BIN/kvd" --id "n$i" --data-dir "$work/n$i" --http-addr "127.0.0.1:$h" --raft-addr "127.0.0.1:$((h + 1))" \
    --initial-cluster "$work/cluster.json" --log-level warn >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  h=$((BASE_PORT + 10*i)); ok=
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$h/readyz" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "node n$i not ready; its log:" >&2; cat "$work/n$i.log" >&2; exit 1; }
done

run() { # label, kvbench args...
  local label=$1; shift
  "$BIN/kvbench" --endpoints "$eps" --duration "$DURATION" --quiet --json "$@" >"$work/$label.json"
}
run put-c1 --clients 1 put
run put-c64 --clients 64 put
run get-lin-c64 --clients 64 --consistency linearizable get
run get-follower-c64 --clients 64 --consistency follower get
run get-stale-c64 --clients 64 --consistency stale get
run put-c16 --clients 16 put
run txn-cross-c16 --clients 16 --txn-groups cross txn
run txn-same-c16 --clients 16 --txn-groups same txn

python3 - "$work" <<'PY'
import json, sys, os
w = sys.argv[1]
r = {n[:-5]: json.load(open(os.path.join(w, n))) for n in os.listdir(w) if n.endswith(".json") and n != "cluster.json"}
order = ["put-c1", "put-c16", "put-c64", "get-lin-c64", "get-follower-c64", "get-stale-c64", "txn-same-c16", "txn-cross-c16"]
print(f"{'workload':18} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>7} {'conflicts':>9}")
for k in order:
    x = r[k]
    print(f"{k:18} {x['ops_per_sec']:9.0f} {x['p50_ms']:8.2f} {x['p99_ms']:8.2f} {x['p999_ms']:9.2f} {x['errors']:7d} {x.get('conflicts', 0):9d}")
def ratio(a, b, f): return r[a][f] / r[b][f] if r[b][f] else float("nan")
print()
print(f"follower/linearizable gets (ops/s): {ratio('get-follower-c64', 'get-lin-c64', 'ops_per_sec'):.2f}x")
print(f"stale/linearizable gets (ops/s):    {ratio('get-stale-c64', 'get-lin-c64', 'ops_per_sec'):.2f}x")
print(f"cross-group txn / put p50 at c16:   {ratio('txn-cross-c16', 'put-c16', 'p50_ms'):.2f}x")
print(f"one-group txn / put p50 at c16:     {ratio('txn-same-c16', 'put-c16', 'p50_ms'):.2f}x")
bad = [k for k in order if r[k]["errors"]]
if bad:
    for k in bad:
        print(f"{k}: {r[k]['errors']} errors, first: {r[k].get('first_error', '?')}")
    sys.exit(1)
PY
