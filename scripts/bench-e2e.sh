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
. "$(dirname "$0")/cluster.sh"
start_cluster

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
