#!/usr/bin/env bash
# Listing figures at scale on a local three-node cluster (release build), for
# docs/performance.md. Grows the store to ORDERS orders (default 1,000,000; ~200-byte orders
# from 1000 customers, all pending), then measures on node 1 alone, SECS seconds each at c=4,
# while creates go on at c=16 through nodes 2 and 3:
#   list-first     the first page of 100 orders;
#   list-cursor    100 pending orders by cursor (after=) from a random id: a filtered page at
#                  any depth;
#   list-numbered  the same page by number (page=N): what it costs to skip the matches before;
#   list-customer  one customer's pending orders, first page, with their total.
# Then each node's RSS and disk use, how long node 3 takes to come back after a SIGKILL (the
# store's reopen: until /livez answers, and until /readyz says it is caught up), and how long
# a new node 4, added as a learner, takes to receive and install the whole store.
#
#   scripts/bench-lists.sh                 # ORDERS=1000000 SECS=10
#   ORDO_BIN=/tmp/before/ordo scripts/bench-lists.sh   # another build's server, same bench
#
# The cluster runs on 127.0.0.1 from BENCH_LISTS_BASE_PORT+1 (default 23400) in a temporary
# directory, stopped and removed however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${ORDERS:-1000000}"
SECS="${SECS:-10}"
BASE_PORT="${BENCH_LISTS_BASE_PORT:-23400}"

cargo build --release -p ordo --bin ordo -p ordo-bench --bin ordo-bench
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ordo-bench-lists.XXXXXX")
export ORDO_BIN="${ORDO_BIN:-target/release/ordo}" ORDO_BASE_PORT=$BASE_PORT ORDO_RUN_DIR=$RUN_DIR
background="" adder="" node4=""
cleanup() {
  [[ -n $background ]] && kill "$background" 2>/dev/null || true
  [[ -n $adder ]] && kill "$adder" 2>/dev/null || true
  if [[ -n $node4 ]]; then # the learner this script started (not in cluster.sh's nodes)
    kill "$node4" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$node4" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$node4" 2>/dev/null || true
  fi
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
scripts/cluster.sh up >/dev/null
NODES=$(scripts/cluster.sh nodes)
N1=$(scripts/cluster.sh url 1)
OTHERS="$(scripts/cluster.sh url 2),$(scripts/cluster.sh url 3)"
bench() { target/release/ordo-bench "$@"; }

echo "== growing the store to $ORDERS orders (creates at c=64)"
started=$(date +%s)
bench --nodes "$NODES" --concurrency 64 --count "$ORDERS" --label "load" | sed -n 1p
echo "loaded in $(($(date +%s) - started)) s"

echo "== lists on node 1 (c=4, $SECS s each) while creates go on at c=16 through nodes 2 and 3"
bench --nodes "$OTHERS" --concurrency 16 --duration-secs $((SECS * 4 + 5)) \
  --label "background creates c=16" >"$RUN_DIR/background.txt" &
background=$!
for workload in list-first list-cursor list-numbered list-customer; do
  bench --nodes "$N1" --workload "$workload" --concurrency 4 --duration-secs "$SECS" \
    --label "$workload" | sed -n 1p
done
wait "$background"
background=""
sed -n 1p "$RUN_DIR/background.txt"

echo "== each node: RSS (MB) and disk (MB) at $(curl -s "$N1/api/orders?per_page=1" \
  | sed 's/.*"total":\([0-9]*\).*/\1/') orders"
for n in 1 2 3; do
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$(cat "$RUN_DIR/n$n/pid")/status")
  disk=$(du -sm "$RUN_DIR/n$n" | cut -f1)
  echo "node $n: RSS $rss MB, disk $disk MB"
done

echo "== reopen: node 3 killed (SIGKILL) with no writes going on, then started again"
N3=$(scripts/cluster.sh url 3)
pid3=$(cat "$RUN_DIR/n3/pid")
scripts/cluster.sh kill 3 >/dev/null
for ((i = 0; i < 100; i++)); do kill -0 "$pid3" 2>/dev/null || break; sleep 0.1; done
started=$(date +%s%N)
scripts/cluster.sh start 3 >/dev/null
live="" ready=""
for ((i = 0; i < 1200; i++)); do # at most ~2 minutes
  if [[ -z $live && $(curl -s -o /dev/null -w '%{http_code}' "$N3/livez") == 200 ]]; then
    live=$((($(date +%s%N) - started) / 1000000))
  fi
  if [[ -n $live && $(curl -s -o /dev/null -w '%{http_code}' "$N3/readyz") == 200 ]]; then
    ready=$((($(date +%s%N) - started) / 1000000))
    break
  fi
  sleep 0.1
done
echo "node 3: /livez after ${live:-(none in 2 min)} ms, /readyz after ${ready:-(none in 2 min)} ms"

echo "== a new node (4) added as a learner: the leader sends it the whole store as a snapshot"
P4=$((BASE_PORT + 4))
N4="http://127.0.0.1:$P4"
mkdir -p "$RUN_DIR/n4"
"$ORDO_BIN" serve --id 4 --listen "127.0.0.1:$P4" --data-dir "$RUN_DIR/n4/data" \
  >"$RUN_DIR/n4/node.log" 2>&1 </dev/null &
node4=$!
for ((i = 0; i < 300; i++)); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$N4/livez") == 200 ]] && break
  sleep 0.1
done
applied() { curl -s "$1/cluster/digest" | sed -n 's/.*"last_applied":\([0-9]*\).*/\1/p'; }
target=$(applied "$N1")
started=$(date +%s%N)
"$ORDO_BIN" cluster --nodes "$NODES" add-learner --id 4 --addr "127.0.0.1:$P4" \
  >"$RUN_DIR/add-learner.txt" 2>&1 &
adder=$!
caught=""
for ((i = 0; i < 3000; i++)); do # at most ~5 minutes
  now=$(applied "$N4")
  if [[ -n $now && $now -ge $target ]]; then
    caught=$((($(date +%s%N) - started) / 1000000))
    break
  fi
  sleep 0.1
done
wait "$adder" || true
adder=""
echo "node 4: applied the leader's index $target after ${caught:-(not within 5 min)} ms;" \
  "add-learner said: $(tail -n 1 "$RUN_DIR/add-learner.txt")"
# node 4 may have caught up from the log alone: no snapshot line is no failure.
{ grep -h -i "snapshot" "$RUN_DIR/n4/node.log" || true; } | { grep -i -E "install|receiv|load" || true; } \
  | head -n 3 | cut -c1-240
echo "node 4: RSS $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$node4/status") MB, disk $(du -sm "$RUN_DIR/n4" | cut -f1) MB"
