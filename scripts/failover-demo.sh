#!/usr/bin/env bash
# Failover demo on the local cluster (scripts/cluster.sh up first): write orders with the CLI,
# SIGKILL the leader, watch a new leader take over, write more, read every order back, then
# restart the killed node and show it caught up.
set -euo pipefail
cd "$(dirname "$0")/.."
ORDO="${ORDO_BIN:-target/release/ordo}"
# The cluster's own URLs (scripts/cluster.sh knows its ports, ORDO_BASE_PORT or not).
if [[ -z ${ORDO_NODES:-} ]]; then
  ORDO_NODES=$(scripts/cluster.sh nodes) # fails (and so does the demo) on a port mismatch
fi
export ORDO_NODES
# A cluster of `scripts/cluster.sh up --secure`: its CA and admin token, unless given.
RUN_DIR="${ORDO_RUN_DIR:-.ordo-cluster}"
if [[ -f $RUN_DIR/secure ]]; then
  export ORDO_CA_CERT="${ORDO_CA_CERT:-$RUN_DIR/certs/ca.pem}"
  # (The bootstrap token until `up` has made the admin, as cluster.sh does.)
  for f in admin-token bootstrap-token; do
    if [[ -z ${ORDO_TOKEN:-} && -s $RUN_DIR/$f ]]; then
      ORDO_TOKEN=$(cat "$RUN_DIR/$f")
      export ORDO_TOKEN
    fi
  done
fi

leader_id() { # `cluster status` exits 8 while the cluster is degraded: still read its answer
  { "$ORDO" cluster status --json || true; } | python3 -c '
import json, sys
for n in json.load(sys.stdin)["nodes"]:
    s = n.get("status") or {}
    if s.get("state") == "leader":
        print(s["node_id"]); break'
}

# Node $1's last applied log index as `cluster status` reports it (0 if it does not answer).
applied_of() {
  { "$ORDO" cluster status --json 2>/dev/null || true; } | python3 -c '
import json, sys
for n in json.load(sys.stdin)["nodes"]:
    s = n.get("status") or {}
    if s.get("node_id") == int(sys.argv[1]):
        print(s.get("last_applied") or 0); break
else:
    print(0)' "$1" 2>/dev/null || echo 0
}

# Prints the new order's id; on a refused write, says why and stops the demo. (Only stdout is
# JSON: a retried write's note on stderr must not spoil it.)
create_order() { # sku-number price-cents
  local out err
  err=$(mktemp)
  if ! out=$("$ORDO" order create --customer demo --item "sku-$1:1:$2" --json 2>"$err"); then
    echo "write refused: $out $(cat "$err")" >&2
    rm -f "$err"
    exit 1
  fi
  cat "$err" >&2 # a note, if any (a retry that found the write applied)
  rm -f "$err"
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$out"
}

# The demo kills the leader and needs the two others: bring back any node that is down (say,
# after `scripts/cluster.sh kill N`) and wait until all three follow one leader.
for n in 1 2 3; do scripts/cluster.sh start "$n" | grep -v "already running" || true; done
for _ in $(seq 1 100); do
  following=$({ "$ORDO" cluster status --json 2>/dev/null || true; } | python3 -c '
import json, sys
print(sum(1 for n in json.load(sys.stdin)["nodes"] if (n.get("status") or {}).get("leader_id") is not None))' 2>/dev/null || echo 0)
  [[ $following == 3 ]] && break
  sleep 0.1
done

echo "== cluster before"
"$ORDO" cluster status || true
leader=$(leader_id)
[[ -n $leader ]] || { echo "no leader: is the cluster up? (scripts/cluster.sh up)" >&2; exit 1; }

ids=()
for i in 1 2 3 4 5; do
  id=$(create_order "$i" $((i * 100)))
  ids+=("$id")
done
echo "== wrote orders ${ids[*]}; killing leader node $leader (SIGKILL)"
scripts/cluster.sh kill "$leader"

start=$(date +%s%N)
for i in 6 7 8 9 10; do
  id=$(create_order "$i" $((i * 100)))
  ids+=("$id")
  [[ $i == 6 ]] && echo "first write after the kill acknowledged in $((($(date +%s%N) - start) / 1000000)) ms (order $id)"
done
echo "== cluster after the kill"
"$ORDO" cluster status || true

echo "== reading every order back (linearizable)"
for id in "${ids[@]}"; do
  "$ORDO" order get "$id" --json >/dev/null || { echo "order $id MISSING" >&2; exit 1; }
  echo "order $id ok"
done

echo "== restarting node $leader"
scripts/cluster.sh start "$leader"
new_leader=""
for _ in $(seq 1 100); do
  new_leader=$(leader_id)
  [[ -n $new_leader ]] && break
  sleep 0.1
done
[[ -n $new_leader ]] || { echo "no leader after the restart" >&2; exit 1; }
target=$(applied_of "$new_leader")
for _ in $(seq 1 100); do
  applied=$(applied_of "$leader")
  [[ $applied -ge $target ]] && break
  sleep 0.1
done
"$ORDO" cluster status || true
"$ORDO" order list --customer demo --per-page 100
