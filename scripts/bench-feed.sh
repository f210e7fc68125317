#!/usr/bin/env bash
# Change-feed figures on a local three-node cluster (release build), for docs/performance.md:
#   1. commit-to-event latency (p50/p99) with 1 and with 100 subscribers, creates at c=16;
#   2. creates/s at c=64 with 100 subscribers versus none (ROUNDS alternating rounds), the
#      subscribers either `Client::watch` streams or light ones (`--feed-light`: they only
#      check each event's id, so that the figure is the nodes' cost more than the consumers'),
#      light ones also with `batch_ms=$BATCH_MS` (the nodes gather changes for that long), with
#      the nodes' CPU time per create and the bench process's own (the subscribers' share);
#   3. events/s one subscriber takes, replaying the change log from its oldest held change;
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
BATCH_MS="${BATCH_MS:-20}"
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
bench --concurrency 16 --feed-subscribers 100 --feed-batch-ms "$BATCH_MS" \
  --label "c=16 subs=100 batch=${BATCH_MS}ms" | grep feed

echo "== creates/s at c=64, without and with 100 subscribers ($ROUNDS rounds)"
# The three nodes' CPU time (user + system, in clock ticks) from /proc.
cpu_ticks() {
  local total=0 n fields
  for n in 1 2 3; do
    read -ra fields <"/proc/$(cat "$RUN_DIR/n$n/pid")/stat"
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}
point() {
  local label=$1 before out ok own
  shift
  before=$(cpu_ticks)
  # `time` reports to the file; the bench's own errors still reach stderr (fd 3).
  out=$({ TIMEFORMAT='%U %S' && time bench --concurrency 64 --label "$label" \
    --json-out "$RUN_DIR/point.json" "$@" 2>&3; } 3>&2 2>"$RUN_DIR/time.txt")
  own=$(cat "$RUN_DIR/time.txt")
  ok=$(sed -n 's/^  "ok": \([0-9]*\),$/\1/p' "$RUN_DIR/point.json")
  echo "$out" | sed -n 1p
  echo "$out" | grep ' feed ' || true
  awk -v t=$(($(cpu_ticks) - before)) -v hz="$(getconf CLK_TCK)" -v ok="$ok" -v own="$own" \
    'BEGIN { split(own, b, " "); printf "   nodes: %.1f CPU-s, %.3f ms of CPU per create; bench process: %.3f ms per create\n", t / hz, t / hz * 1000 / ok, (b[1] + b[2]) * 1000 / ok }'
}
for ((r = 1; r <= ROUNDS; r++)); do
  point "c=64 subs=0"
  point "c=64 subs=100" --feed-subscribers 100
  point "c=64 light=100" --feed-subscribers 100 --feed-light
  point "c=64 light=100 batch=${BATCH_MS}ms" --feed-subscribers 100 --feed-light --feed-batch-ms "$BATCH_MS"
done

echo "== one subscriber replaying the change log from its oldest held change"
target/release/ordo-bench --nodes "$NODES" --feed-replay --label "replay"

echo "== a stalled consumer on node 2 while writes go on (RSS of nodes 2 and 3, in kB)"
# Nodes 2 and 3 apply the same writes; only node 2 serves the stalled stream.
rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$RUN_DIR/n$1/pid")/status"; }
# From the newest change on (an earlier `since` may be trimmed already after the runs above,
# and a 410 would end curl at once).
curl -sN --limit-rate 1 "$(scripts/cluster.sh url 2)/api/orders/changes" >/dev/null &
stalled=$!
before="$(rss 2) $(rss 3)"
target/release/ordo-bench --nodes "$NODES" --concurrency 16 --duration-secs $((SECS * 3)) --label "writes, 1 stalled" | sed -n 1p
after="$(rss 2) $(rss 3)"
echo "RSS before (node 2, node 3): $before; after $((SECS * 3)) s of writes: $after"
if kill -0 "$stalled" 2>/dev/null; then
  echo "the stalled stream was still open at the end"
else
  echo "the stalled stream had ended (cut off for lagging, or refused)"
fi
