# cluster.sh — sourced by the scripts that run a real 3-node kvd cluster
# (3 groups x 3 replicas) on loopback. The caller sets BIN (kvd's folder)
# and BASE_PORT (nodes use BASE_PORT+10*i for HTTP and +1 for Raft), and
# work, a scratch folder. start_cluster sets eps (the nodes' URLs, comma
# separated) and pids; stop_cluster stops the nodes and removes their
# data; the EXIT trap stops them and removes work.

pids=()
eps=""

stop_cluster() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  pids=()
  rm -rf "$work"/n1 "$work"/n2 "$work"/n3
}
trap 'stop_cluster; rm -rf "$work"' EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_cluster() {
  local nodes="" i h r ok
  eps=""
  for i in 1 2 3; do
    h=$((BASE_PORT + 10*i)); r=$((h + 1))
    port_free "$h" && port_free "$r" || { echo "port $h or $r is in use (set BASE_PORT)" >&2; exit 2; }
    nodes+="${nodes:+,}{\"id\":\"n$i\",\"http\":\"127.0.0.1:$h\",\"raft\":\"127.0.0.1:$r\"}"
    eps+="${eps:+,}http://127.0.0.1:$h"
  done
  echo "{\"nodes\":[$nodes],\"groups\":3,\"replicas\":3}" >"$work/cluster.json"
  pids=()
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
}
