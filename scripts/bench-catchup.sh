#!/usr/bin/env bash
# A follower catching up from the log, at real sizes: a fresh three-node ordo cluster on
# 127.0.0.1 (ports 25011-25013, temp dirs); a follower is stopped (SIGTERM), ORDERS orders
# (default 1,000,000; ITEMS line items each, default 2, at most 100) are created through the
# other two by ordo-bench at concurrency 64, and the follower is started again. Until its applied index reaches what the others had applied
# (bounded: 30 minutes), the RSS (MiB) of every node is sampled every half second. Prints the load's
# result line, the follower's peak RSS and the time it took to catch up, the others' peaks
# meanwhile, the follower's RSS 10 s later, and the leader's AppendEntries timeouts to it and
# the follower's appends that waited for its applies (RUST_LOG below makes them visible).
# Every process it starts is stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

ORDERS="${ORDERS:-1000000}"
ITEMS="${ITEMS:-2}"
AFTER_READS_SECS="${AFTER_READS_SECS:-30}"
BASE=25010
# ORDO_BIN / ORDO_BENCH_BIN: binaries to compare instead of this checkout's release build.
if [[ -z ${ORDO_BIN:-} ]]; then cargo build --release --quiet -p ordo -p ordo-bench; fi
ORDO="${ORDO_BIN:-target/release/ordo}"
BENCH="${ORDO_BENCH_BIN:-target/release/ordo-bench}"
WORK=$(mktemp -d /tmp/ordo-bench-catchup.XXXXXX)
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

url() { echo "http://127.0.0.1:$((BASE + $1))"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { python3 -c "print(f'{($(now_ms) - $1) / 1000:.1f}')"; }
rss_mb() { echo $(($(ps -o rss= -p "${PID[$1]}" 2>/dev/null || echo 0) / 1024)); } # MiB
metric() { # N NAME: node N's value of the metric line NAME (empty if it does not answer)
  { curl -fsS --max-time 2 "$(url "$1")/metrics" 2>/dev/null || true; } |
    awk -v m="$2" '$1 == m { print int($2) }'
}
wait_ready() { # N: polls /readyz (at most 600 s)
  local deadline=$((SECONDS + 600))
  while ((SECONDS < deadline)); do
    curl -fsS --max-time 1 "$(url "$1")/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $1 never became ready" >&2; return 1
}
# ordo's default filter, with openraft's replication warnings (a timed-out append) and the peer
# client's budget changes on.
LOG_FILTER="info,openraft=warn,openraft::engine::handler::replication_handler=off,ordo::access=warn,ordo::rpc::network=debug"
PEERS="1=127.0.0.1:$((BASE + 1)),2=127.0.0.1:$((BASE + 2)),3=127.0.0.1:$((BASE + 3))"
start() { # N
  RUST_LOG="$LOG_FILTER" "$ORDO" serve --id "$1" --listen "127.0.0.1:$((BASE + $1))" --data-dir "$WORK/n$1" \
    --peers "$PEERS" --initial-cluster-state new >>"$WORK/n$1.log" 2>&1 &
  PID[$1]=$!
}

for n in 1 2 3; do start "$n"; done
for n in 1 2 3; do wait_ready "$n"; done
# The follower to stop: node 3 unless it leads.
leader=""
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
  leader=$(metric 1 ordo_raft_leader_id)
  [[ -n $leader && $leader != 0 ]] && break
  sleep 0.2
done
F=3
[[ $leader == 3 ]] && F=2
OTHERS=()
for n in 1 2 3; do [[ $n != "$F" ]] && OTHERS+=("$n"); done
echo "leader: node $leader; stopping node $F"
kill -TERM "${PID[$F]}"
deadline=$((SECONDS + 30))
while kill -0 "${PID[$F]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
kill -9 "${PID[$F]}" 2>/dev/null || true
wait "${PID[$F]}" 2>/dev/null || true

t=$(now_ms)
"$BENCH" --nodes "$(url "${OTHERS[0]}"),$(url "${OTHERS[1]}")" --workload create --concurrency 64 \
  --count "$ORDERS" --items "$ITEMS" --label "load, node $F down"
echo "load: $ORDERS requests in $(secs_since "$t") s"
target=0
for n in "${OTHERS[@]}"; do a=$(metric "$n" ordo_raft_applied_index); ((${a:-0} > target)) && target=$a; done
echo "to catch up: node $F, up to index $target; RSS before: $(for n in "${OTHERS[@]}"; do printf 'node %s %s MiB ' "$n" "$(rss_mb "$n")"; done)"

t=$(now_ms)
start "$F"
declare -A PEAK=([1]=0 [2]=0 [3]=0)
caught_up=""
deadline=$((SECONDS + 1800))
while ((SECONDS < deadline)); do
  for n in 1 2 3; do r=$(rss_mb "$n"); ((r > PEAK[$n])) && PEAK[$n]=$r; done
  a=$(metric "$F" ordo_raft_applied_index)
  if ((${a:-0} >= target)); then caught_up=$(secs_since "$t"); break; fi
  sleep 0.5
done
[[ -n $caught_up ]] || { echo "node $F did not catch up within 30 minutes" >&2; exit 1; }
echo "node $F caught up in $caught_up s; peak RSS: node 1 ${PEAK[1]} MiB, node 2 ${PEAK[2]} MiB, node 3 ${PEAK[3]} MiB"
waited=$(curl -fsS --max-time 2 "$(url "$F")/metrics" 2>/dev/null | grep '^ordo_log_apply_lag_waits_total' || true)
echo "node $F's appends that waited for its applies: ${waited:-none}"
# An append left unanswered past the deadline halves the budget (logged when it shrinks it);
# openraft logs as a timeout only those its own deadline ended (the peer client's, the same
# heartbeat, reports a network error).
shrinks=$(cat "$WORK"/n*.log | grep -c "smaller batches for a while" || true)
timeouts=$(cat "$WORK"/n*.log | grep "error replication to target=$F" | grep -c "timeout after" || true)
echo "append budget halvings (all peers; only node $F lags): $shrinks ($timeouts appends to node $F logged by openraft as timeouts)"
sleep 10
echo "10 s later: node 1 $(rss_mb 1) MiB, node 2 $(rss_mb 2) MiB, node 3 $(rss_mb 3) MiB"
# sled's cache weighs what a node reads only once enough other pages are touched after it
# (docs/performance.md, "What sled's cache holds"), so an idle node keeps what the catch-up read.
# Reads of random orders on every node, as a live cluster would serve, touch those pages.
if ((AFTER_READS_SECS > 0)); then
  "$BENCH" --nodes "$(url 1),$(url 2),$(url 3)" --workload read-stale --concurrency 16 \
    --duration-secs "$AFTER_READS_SECS" --label "reads after the catch-up" >/dev/null
  echo "after $AFTER_READS_SECS s of stale reads on every node: node 1 $(rss_mb 1) MiB, node 2 $(rss_mb 2) MiB, node 3 $(rss_mb 3) MiB"
fi
