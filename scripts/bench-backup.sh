#!/usr/bin/env bash
# Backup and restore at real sizes: a fresh three-node ordo cluster on 127.0.0.1 (ports
# 25001-25003, temp dirs) is loaded with ORDERS orders (default 1,000,000, by ordo-bench at
# concurrency 64), then, with a write load of concurrency 16 still running:
#  - `ordo backup --out`: seconds (the node's snapshot build included) and bytes;
#  - `ordo backup verify`: seconds;
# and with the load stopped:
#  - `ordo restore`: seconds; the restored node's start until /readyz answers 200: seconds;
#  - its digest against the backup's (must be equal).
# Prints one line per figure. Every process it starts is stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

ORDERS="${ORDERS:-1000000}"
BASE=25000
cargo build --release --quiet -p ordo -p ordo-bench
ORDO=target/release/ordo
BENCH=target/release/ordo-bench
WORK=$(mktemp -d /tmp/ordo-bench-backup.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { python3 -c "print(f'{($(now_ms) - $1) / 1000:.1f}')"; }
wait_ready() { # URL: polls /readyz (at most 600 s)
  local i
  for i in $(seq 1 6000); do
    curl -fsS --max-time 1 "$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 never became ready" >&2; return 1
}

PEERS="1=127.0.0.1:$((BASE + 1)),2=127.0.0.1:$((BASE + 2)),3=127.0.0.1:$((BASE + 3))"
for n in 1 2 3; do
  "$ORDO" serve --id "$n" --listen "127.0.0.1:$((BASE + n))" --data-dir "$WORK/n$n" --peers "$PEERS" \
    --initial-cluster-state new >>"$WORK/n$n.log" 2>&1 &
  PIDS+=($!)
done
NODES="http://127.0.0.1:$((BASE + 1)),http://127.0.0.1:$((BASE + 2)),http://127.0.0.1:$((BASE + 3))"
for n in 1 2 3; do wait_ready "http://127.0.0.1:$((BASE + n))"; done

t=$(now_ms)
"$BENCH" --nodes "$NODES" --workload create --concurrency 64 --count "$ORDERS" --label load >/dev/null
echo "load: $ORDERS orders in $(secs_since "$t") s"

# A write load beside the backup (stopped by PID after it).
"$BENCH" --nodes "$NODES" --workload create --concurrency 16 --duration-secs 3600 --label beside >/dev/null 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
sleep 2
t=$(now_ms)
"$ORDO" backup --nodes "$NODES" --out "$WORK/orders.backup" --json >"$WORK/backup.json"
echo "backup (under writes at c=16): $(secs_since "$t") s, $(stat -c %s "$WORK/orders.backup") bytes, index $(python3 -c "import json; print(json.load(open('$WORK/backup.json'))['header']['index'])")"
t=$(now_ms)
"$ORDO" backup verify "$WORK/orders.backup" >/dev/null
echo "verify: $(secs_since "$t") s"
kill "$LOAD" 2>/dev/null || true

t=$(now_ms)
"$ORDO" restore --from "$WORK/orders.backup" --data-dir "$WORK/restored" >/dev/null
echo "restore: $(secs_since "$t") s"
t=$(now_ms)
"$ORDO" serve --id 1 --listen "127.0.0.1:$((BASE + 9))" --data-dir "$WORK/restored" >>"$WORK/restored.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$((BASE + 9))"
echo "restored node ready: $(secs_since "$t") s"
want=$(python3 -c "import json; print(json.load(open('$WORK/backup.json'))['digest'])")
got=$(curl -fsS "http://127.0.0.1:$((BASE + 9))/cluster/digest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
[[ $want == "$got" ]] && echo "digest: equal to the backup's" || { echo "digest: DIFFERENT ($got, backup $want)"; exit 1; }
