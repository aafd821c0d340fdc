#!/usr/bin/env bash
# scale.sh KEYS VALUE_SIZE — one kvd node on loopback holding KEYS keys of
# VALUE_SIZE bytes (written by kvbench's preload), then: put and get
# throughput at 64 clients, resident memory, the data directory, state
# and snapshot sizes, the time to add a replica of the group on a second
# node (the snapshot shipped, the learner promoted), and the restart time
# after SIGTERM and after kill -9. Env: BIN (default ./bin), P (the first
# node's HTTP port, default 31500; it uses P..P+1 and P+10..P+11).
# Example: scripts/scale.sh 1000000 256; scripts/scale.sh 8000 65536
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: scripts/scale.sh KEYS VALUE_SIZE" >&2; exit 2; }
KEYS=$1; VS=$2; BIN=${BIN:-./bin}; P=${P:-31500}
[ -x "$BIN/kvd" ] && [ -x "$BIN/kvbench" ] || { echo "build first: make build" >&2; exit 2; }
w=$(mktemp -d /tmp/ship.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$w"; }
trap cleanup EXIT
echo "{\"nodes\":[{\"id\":\"n1\",\"http\":\"127.0.0.1:$P\",\"raft\":\"127.0.0.1:$((P+1))\"}],\"groups\":1,\"replicas\":1}" > $w/c.json
start1() { "$BIN/kvd" --id n1 --data-dir $w/n1 --http-addr 127.0.0.1:$P --raft-addr 127.0.0.1:$((P+1)) --initial-cluster $w/c.json --balance-replicas=false --log-level warn >>$w/n1.log 2>&1 & pid1=$!; pids+=($pid1); }
ready() { for _ in $(seq 1 600); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready $1"; tail -20 $w/*.log; exit 1; }
start1; ready $P
t0=$(date +%s.%N)
"$BIN/kvbench" --endpoints http://127.0.0.1:$P --clients 64 --keys $KEYS --value-size $VS --total 1 --quiet --warmup 0s get >/dev/null
t1=$(date +%s.%N); echo "preload: $(echo "$t1 - $t0" | bc) s"
for r in 1 2; do
"$BIN/kvbench" --endpoints http://127.0.0.1:$P --clients 64 --keys $KEYS --value-size $VS --duration 8s --quiet --json put | python3 -c 'import json,sys; x=json.load(sys.stdin); print("put c64: %.0f ops/s p50 %.2f ms p99 %.2f ms"%(x["ops_per_sec"],x["p50_ms"],x["p99_ms"]))'
done
"$BIN/kvbench" --endpoints http://127.0.0.1:$P --clients 64 --keys $KEYS --value-size $VS --duration 8s --quiet --json --preload=false get | python3 -c 'import json,sys; x=json.load(sys.stdin); print("get c64: %.0f ops/s p50 %.2f ms"%(x["ops_per_sec"],x["p50_ms"]))'
echo "rss: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$pid1/status), anon: $(awk '/RssAnon/{print $2/1024 " MiB"}' /proc/$pid1/status)"
echo "data dir: $(du -sh $w/n1 | cut -f1); state.db $(du -h $w/n1/groups/1/state.db | cut -f1); snapshots: $(du -sh $w/n1/groups/1/snapshots/* 2>/dev/null | tr '\n' ' ')"
# a second node; then a replica of group 1 on it
"$BIN/kvd" --id n2 --join http://127.0.0.1:$P --peer-secret-file $w/n1/peer.secret --data-dir $w/n2 --http-addr 127.0.0.1:$((P+10)) --raft-addr 127.0.0.1:$((P+11)) --balance-replicas=false --log-level warn >>$w/n2.log 2>&1 & pids+=($!)
ready $((P+10))
t0=$(date +%s.%N)
code=$(curl -s -o $w/add.json -w '%{http_code}' -X POST "http://127.0.0.1:$P/v1/admin/groups/1/members?wait=1m" -d '{"node":"n2"}')
for _ in $(seq 1 1200); do curl -fsS http://127.0.0.1:$P/v1/cluster | grep -q '"learners":\["' || break; sleep 0.1; done
t1=$(date +%s.%N); echo "add replica (snapshot shipped, learner promoted): $(echo "$t1 - $t0" | bc) s, status $code $(head -c 200 $w/add.json)"
echo "n2 snapshots: $(du -sh $w/n2/groups/1/snapshots/* 2>/dev/null | tr '\n' ' ')"
# restarts of n1
kill -TERM $pid1; while kill -0 $pid1 2>/dev/null; do sleep 0.05; done
t0=$(date +%s.%N); start1; ready $P; t1=$(date +%s.%N); echo "restart after SIGTERM: $(echo "$t1 - $t0" | bc) s"
kill -KILL $pid1; while kill -0 $pid1 2>/dev/null; do sleep 0.05; done
t0=$(date +%s.%N); start1; ready $P; t1=$(date +%s.%N); echo "restart after kill -9: $(echo "$t1 - $t0" | bc) s"
