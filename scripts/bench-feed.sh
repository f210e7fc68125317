#!/usr/bin/env bash
# Change-feed figures on a local three-node cluster (release build), for docs/performance.md:
#   1. commit-to-event latency (p50/p99) with 1 and with 100 subscribers, creates at c=16;
#   2. creates/s at c=64 with 100 subscribers versus none (ROUNDS alternating rounds);
#   3. events/s one subscriber takes, replaying the change log from revision 0;
#   4. the RSS of a node serving a stalled consumer (curl reading 1 byte/s) while writes go on.
#
#   scripts/bench-feed.sh            # ROUNDS=2, SECS=10 by default
#
# The cluster runs on 127.0.0.1 from BENCH_FEED_BASE_PORT+1 (default 23300) in a temporary
# directory, stopped and removed however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
SECS="${SECS:-10}"
BASE_PORT="${BENCH_FEED_BASE_PORT:-23300}"

cargo build --release -p ordo --bin ordo -p ordo-bench --bin ordo-bench
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ordo-bench-feed.XXXXXX")
export ORDO_BIN=target/release/ordo ORDO_BASE_PORT=$BASE_PORT ORDO_RUN_DIR=$RUN_DIR
stalled=""
cleanup() {
  [[ -n $stalled ]] && kill "$stalled" 2>/dev/null || true
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
scripts/cluster.sh up >/dev/null
NODES=$(scripts/cluster.sh nodes)
bench() { target/release/ordo-bench --nodes "$NODES" --duration-secs "$SECS" "$@"; }

echo "== commit-to-event latency, creates at c=16"
for subs in 1 100; do
  bench --concurrency 16 --feed-subscribers "$subs" --label "c=16 subs=$subs" | grep feed
done

echo "== creates/s at c=64, without and with 100 subscribers ($ROUNDS rounds)"
for ((r = 1; r <= ROUNDS; r++)); do
  bench --concurrency 64 --label "c=64 subs=0" | sed -n 1p
  bench --concurrency 64 --feed-subscribers 100 --label "c=64 subs=100" | sed -n 1p
done

echo "== one subscriber replaying the change log from revision 0"
target/release/ordo-bench --nodes "$NODES" --feed-replay --label "replay"

echo "== a stalled consumer on node 2 while writes go on (RSS of nodes 2 and 3, in kB)"
# Nodes 2 and 3 apply the same writes; only node 2 serves the stalled stream.
rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$RUN_DIR/n$1/pid")/status"; }
curl -sN --limit-rate 1 "$(scripts/cluster.sh url 2)/api/orders/changes?since=0" >/dev/null &
stalled=$!
before="$(rss 2) $(rss 3)"
target/release/ordo-bench --nodes "$NODES" --concurrency 16 --duration-secs $((SECS * 3)) --label "writes, 1 stalled" | sed -n 1p
after="$(rss 2) $(rss 3)"
echo "RSS before (node 2, node 3): $before; after $((SECS * 3)) s of writes: $after"
