#!/usr/bin/env bash
# One local three-node cluster (release build) growing to ORDERS orders (default 10,000,000),
# for the "ten million orders" figures of docs/performance.md:
#   1. growth: creates at c=64 spread over the three nodes, in windows of WINDOW orders
#      (default 500,000); per window creates/s, p50/p99/max latency, errors, each node's RSS
#      and disk. Written to $OUT/growth.csv and drawn in $OUT/growth.svg (python3, no extra
#      packages);
#   2. snapshots: every snapshot built or installed, from the nodes' logs (size, time);
#   3. lists on node 1 at full size (c=4, SECS each) while creates go on at c=16 through
#      nodes 2 and 3, as scripts/bench-lists.sh does;
#   4. reopen: node 3 killed (SIGKILL) and started again, until /livez and /readyz;
#   5. catch-up: node 3 stopped (SIGTERM) while CATCHUP more orders (default 1,000,000) are
#      created through nodes 1 and 2, then started: how long until it has applied as far as
#      the leader, and how (log entries or a snapshot install, from its log).
#
#   scripts/bench-growth.sh                            # ORDERS=10000000, ~1 hour on 2 cores
#   ORDERS=2000000 WINDOW=250000 scripts/bench-growth.sh
#
# Disk: about 1.3 GB per node per million orders (three nodes: ~45 GB at 11 million), in
# TMPDIR; the script says so and stops if the disk has less free. The cluster runs on
# 127.0.0.1 from BENCH_GROWTH_BASE_PORT+1 (default 23600), is stopped and its data removed
# however the script ends; the results stay in $OUT (default a new /tmp/ordo-growth.* dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${ORDERS:-10000000}"
WINDOW="${WINDOW:-500000}"
CATCHUP="${CATCHUP:-1000000}"
SECS="${SECS:-10}"
BASE_PORT="${BENCH_GROWTH_BASE_PORT:-23600}"
OUT="${OUT:-$(mktemp -d /tmp/ordo-growth.XXXXXX)}"
mkdir -p "$OUT"

cargo build --release -p ordo --bin ordo -p ordo-bench --bin ordo-bench
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ordo-bench-growth.XXXXXX")
need_mb=$(((ORDERS + CATCHUP) * 3 * 1400 / 1000000 + 3000))
free_mb=$(df -Pm "$RUN_DIR" | awk 'NR == 2 {print $4}')
if ((free_mb < need_mb)); then
  echo "need about $need_mb MB free for $ORDERS + $CATCHUP orders on three nodes; $RUN_DIR has $free_mb MB" >&2
  rmdir "$RUN_DIR"
  exit 1
fi
export ORDO_BIN="${ORDO_BIN:-target/release/ordo}" ORDO_BASE_PORT=$BASE_PORT ORDO_RUN_DIR=$RUN_DIR
background=""
cleanup() {
  [[ -n $background ]] && kill "$background" 2>/dev/null || true
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
scripts/cluster.sh up >/dev/null
NODES=$(scripts/cluster.sh nodes)
N1=$(scripts/cluster.sh url 1)
N2=$(scripts/cluster.sh url 2)
N3=$(scripts/cluster.sh url 3)
bench() { target/release/ordo-bench "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$(cat "$RUN_DIR/n$1/pid")/status" 2>/dev/null || echo 0; }
disk_mb() { du -sm "$RUN_DIR/n$1" | cut -f1; }
# The applied index in node URL $1's status (empty if it does not answer).
applied() {
  curl -s --max-time 2 "$1/cluster/status" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_applied"] or 0)' 2>/dev/null || true
}
# A result file of ordo-bench --json-out as "rate p50 p99 max errors".
figures() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_ms"]
print(round(r["throughput_per_sec"]), l["p50"], l["p99"], l["max"], sum(r["errors"].values()))' "$1"
}

echo "== growing to $ORDERS orders in windows of $WINDOW (creates at c=64 over three nodes); results in $OUT"
echo "orders,seconds,creates_per_s,p50_ms,p99_ms,max_ms,errors,rss1_mb,rss2_mb,rss3_mb,disk1_mb,disk2_mb,disk3_mb" >"$OUT/growth.csv"
printf '%10s %8s %9s %8s %8s %9s %6s %18s %24s\n' orders secs creates/s p50_ms p99_ms max_ms errors "RSS MB (1 2 3)" "disk MB (1 2 3)"
grown=0 started=$(now_ms)
while ((grown < ORDERS)); do
  count=$((ORDERS - grown < WINDOW ? ORDERS - grown : WINDOW))
  bench --nodes "$NODES" --concurrency 64 --count "$count" --duration-secs 36000 \
    --json-out "$RUN_DIR/window.json" >/dev/null
  grown=$((grown + count))
  read -r rate p50 p99 max errors < <(figures "$RUN_DIR/window.json")
  secs=$((($(now_ms) - started) / 1000))
  r1=$(rss_mb 1) r2=$(rss_mb 2) r3=$(rss_mb 3) d1=$(disk_mb 1) d2=$(disk_mb 2) d3=$(disk_mb 3)
  echo "$grown,$secs,$rate,$p50,$p99,$max,$errors,$r1,$r2,$r3,$d1,$d2,$d3" >>"$OUT/growth.csv"
  printf '%10d %8d %9d %8.2f %8.2f %9.1f %6d %18s %24s\n' "$grown" "$secs" "$rate" "$p50" "$p99" "$max" \
    "$errors" "$r1 $r2 $r3" "$d1 $d2 $d3"
done

echo "== snapshots built and installed while growing (node: time, bytes, ms)"
for n in 1 2 3; do
  # A short run may build no snapshot: grep then finds nothing, which is no failure here.
  { grep -h -E "built snapshot|installed snapshot" "$RUN_DIR/n$n/node.log" || true; } \
    | sed -E 's/^([^ ]+).*(built|installed) snapshot.*bytes=([0-9]+).*ms=([0-9]+).*/\1 \2 \3 \4/' \
    | awk -v n="$n" '{printf "node %s: %s %s %.0f MB in %.1f s\n", n, $1, $2, $3 / 1e6, $4 / 1000}'
done | tee "$OUT/snapshots.txt"

echo "== lists on node 1 (c=4, $SECS s each) while creates go on at c=16 through nodes 2 and 3"
bench --nodes "$N2,$N3" --concurrency 16 --duration-secs $((SECS * 4 + 5)) \
  --label "background creates c=16" >"$RUN_DIR/background.txt" &
background=$!
for workload in list-first list-cursor list-numbered list-customer; do
  bench --nodes "$N1" --workload "$workload" --concurrency 4 --duration-secs "$SECS" \
    --label "$workload" | sed -n 1p
done | tee "$OUT/lists.txt"
wait "$background"
background=""
sed -n 1p "$RUN_DIR/background.txt" | tee -a "$OUT/lists.txt"

# Until node URL $1 answers /livez (then /readyz) 200, at most $2 seconds: "live_ms ready_ms".
wait_up() {
  local from=$(now_ms) live="" ready="" i
  for ((i = 0; i < $2 * 10; i++)); do
    if [[ -z $live && $(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$1/livez") == 200 ]]; then
      live=$(($(now_ms) - from))
    fi
    if [[ -n $live && $(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$1/readyz") == 200 ]]; then
      ready=$(($(now_ms) - from))
      break
    fi
    sleep 0.1
  done
  echo "${live:-none} ${ready:-none}"
}

echo "== reopen: node 3 killed (SIGKILL) with no writes going on, then started again"
pid3=$(cat "$RUN_DIR/n3/pid")
scripts/cluster.sh kill 3 >/dev/null
for ((i = 0; i < 100; i++)); do kill -0 "$pid3" 2>/dev/null || break; sleep 0.1; done
scripts/cluster.sh start 3 >/dev/null
read -r live ready < <(wait_up "$N3" 300)
echo "node 3: /livez after $live ms, /readyz after $ready ms" | tee "$OUT/reopen.txt"

echo "== catch-up: node 3 stopped while $CATCHUP more orders are created through nodes 1 and 2"
scripts/cluster.sh stop 3 >/dev/null
bench --nodes "$N1,$N2" --concurrency 64 --count "$CATCHUP" --duration-secs 36000 \
  --label "creates with node 3 down" | sed -n 1p | tee "$OUT/catchup.txt"
target=$(applied "$N1")
from=$(now_ms)
scripts/cluster.sh start 3 >/dev/null
caught=""
for ((i = 0; i < 12000; i++)); do # at most ~20 minutes
  now=$(applied "$N3")
  if [[ -n $now && $now -ge $target ]]; then
    caught=$(($(now_ms) - from))
    break
  fi
  sleep 0.1
done
if [[ -n $caught ]]; then caught="after $caught ms"; else caught="not within 20 min"; fi
echo "node 3: applied the leader's index $target $caught" | tee -a "$OUT/catchup.txt"
# How it caught up: a snapshot installed since its last start (the log read backwards to
# that start), or else from the leader's log.
installed=$(tac "$RUN_DIR/n3/node.log" | sed '/node serving/q' | grep "installed snapshot" | cut -c1-240 || true)
[[ -n $installed ]] || installed="node 3 installed no snapshot: it caught up from the leader's log"
echo "$installed" | tee -a "$OUT/catchup.txt"
for n in 1 2 3; do echo "node $n: RSS $(rss_mb "$n") MB, disk $(disk_mb "$n") MB"; done | tee -a "$OUT/catchup.txt"

python3 - "$OUT/growth.csv" "$OUT/growth.svg" <<'PY'
# Two panels, creates/s and p99/max latency against orders stored, as a plain SVG.
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
x = [int(r["orders"]) / 1e6 for r in rows]
W, H, L, T, PW, PH = 760, 560, 70, 30, 660, 200
def panel(top, series, label, unit):
    ymax = max(max(s) for s, _, _ in series) * 1.1 or 1
    xmax = max(x) or 1
    out = [f'<rect x="{L}" y="{top}" width="{PW}" height="{PH}" fill="none" stroke="#999"/>',
           f'<text x="{L}" y="{top - 8}" font-size="13">{label}</text>']
    for i in range(5):
        v = ymax * i / 4
        y = top + PH - PH * i / 4
        out.append(f'<text x="{L - 6}" y="{y + 4}" font-size="11" text-anchor="end">{v:.0f}{unit}</text>')
        out.append(f'<line x1="{L}" x2="{L + PW}" y1="{y}" y2="{y}" stroke="#eee"/>')
    for s, colour, name in series:
        pts = " ".join(f"{L + PW * a / xmax:.1f},{top + PH - PH * b / ymax:.1f}" for a, b in zip(x, s))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for i, (_, colour, name) in enumerate(series):
        out.append(f'<text x="{L + PW - 10}" y="{top + 16 + 14 * i}" font-size="11" fill="{colour}" text-anchor="end">{name}</text>')
    return out
body = panel(T, [([float(r["creates_per_s"]) for r in rows], "#1f77b4", "creates/s, c=64")], "creates/s per window", "")
body += panel(T + PH + 60, [([float(r["p99_ms"]) for r in rows], "#d62728", "p99"),
                            ([float(r["max_ms"]) for r in rows], "#ff7f0e", "max")], "latency per window (ms)", "")
body.append(f'<text x="{L + PW / 2}" y="{H - 10}" font-size="12" text-anchor="middle">orders stored (millions)</text>')
for i in range(6):
    v = max(x) * i / 5
    body.append(f'<text x="{L + PW * i / 5}" y="{T + 2 * PH + 80}" font-size="11" text-anchor="middle">{v:.1f}</text>')
open(sys.argv[2], "w").write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">'
                             f'<rect width="{W}" height="{H}" fill="white"/>' + "".join(body) + "</svg>\n")
PY
echo "== results: $OUT (growth.csv, growth.svg, snapshots.txt, lists.txt, reopen.txt, catchup.txt)"
