#!/usr/bin/env bash
# ordo against etcd on this machine, side by side, both at full durability (fsync on).
#
#   scripts/bench-vs-etcd.sh            # matrix + failover + recovery, ordo and etcd
#   ORDO_ONLY=1 scripts/bench-vs-etcd.sh   # ordo alone (what scripts/bench.sh runs)
#
# Starts a fresh three-node ordo cluster and a fresh three-member etcd cluster on 127.0.0.1
# (temp dirs, ports 24001-24003 for ordo, 24101-24103 / 24201-24203 for etcd), then:
#  - the matrix: creates at concurrency 1, 16, 64, 256; linearizable and stale reads at 64,
#    each point run for ordo then etcd (alternating, so machine noise hits both), one line per
#    point ending in the throughput ratio; all load comes from `ordo-bench`: etcd through its
#    native gRPC API (Put with ~200-byte values, Range linearizable/serializable; one
#    connection per member; ordo-bench built with its etcd-grpc feature, which needs protoc,
#    installed here when root), or with ETCD_API=gateway through its JSON gateway
#    (/v3/kv/put, /v3/kv/range over HTTP/1.1), the figures before issue #17;
#  - failover: SIGKILL of the leader → first acknowledged write through a survivor, 10 times;
#  - recovery (ordo): a node down while RECOVERY_ORDERS orders are written, then restarted:
#    seconds to catch up, on-disk bytes and each node's peak RSS.
# Every process it starts is stopped on exit, by PID. Knobs: POINT_SECS (10), ROUNDS (1: with
# more, each point runs that many ordo/etcd pairs and ends in a line of medians), KILLS (10),
# RECOVERY_ORDERS (100000), ORDO_SERVE_ARGS (extra `ordo serve` flags, e.g. timings),
# PARTS (which sections to run: "matrix failover recovery", and "memory": RSS while
# MEMORY_ORDERS (1000000) orders are written, best alone: PARTS=memory ORDO_ONLY=1).
# ORDO_BASELINE=/path/to/an/older/ordo: the matrix against that build instead of etcd (it runs
# as the second cluster, on etcd's ports, and prints as "base"): before/after in one run,
#   git worktree add /tmp/before HEAD~3 && (cd /tmp/before && cargo build --release -p ordo)
#   ORDO_BASELINE=/tmp/before/target/release/ordo ROUNDS=3 scripts/bench-vs-etcd.sh
# ORDO_UNDER_TEST=/path/to/ordo: the first cluster's binary (default: this tree's release
# build); with ORDO_BASELINE, swapping the two checks that a difference is not the order the
# clusters run in.
# SECURE=1: both sides over TLS (development certificates from `ordo dev-certs`, also for
# etcd's client and peer ports), ordo with --auth too (the load runs as an admin user); the
# matrix only.
set -euo pipefail
cd "$(dirname "$0")/.."

POINT_SECS="${POINT_SECS:-10}"
ROUNDS="${ROUNDS:-1}"
KILLS="${KILLS:-10}"
RECOVERY_ORDERS="${RECOVERY_ORDERS:-100000}"
ORDO_ONLY="${ORDO_ONLY:-}"
ORDO_SERVE_ARGS="${ORDO_SERVE_ARGS:-}"
PARTS="${PARTS:-matrix failover recovery}"
MEMORY_ORDERS="${MEMORY_ORDERS:-1000000}"
ORDO_BASELINE="${ORDO_BASELINE:-}"
SECURE="${SECURE:-}"
[[ -n $SECURE ]] && PARTS=matrix
ETCD_API="${ETCD_API:-grpc}"
# The gRPC load has no TLS client: a secure run compares through the gateway.
if [[ -n $SECURE && $ETCD_API != gateway ]]; then
  echo "SECURE=1: etcd through its JSON gateway (the gRPC load has no TLS client)" >&2
  ETCD_API=gateway
fi
case $ETCD_API in
  grpc) ETCD_TARGET=etcd-grpc; OTHER=etcd-grpc ;;
  gateway) ETCD_TARGET=etcd; OTHER=etcd-gw ;;
  *) echo "ETCD_API must be grpc or gateway" >&2; exit 1 ;;
esac
# OTHER names the second system: etcd (by its API), or the baseline ordo ("base").
if [[ -n $ORDO_BASELINE ]]; then
  [[ -x $ORDO_BASELINE ]] || { echo "ORDO_BASELINE=$ORDO_BASELINE is not an executable" >&2; exit 1; }
  OTHER=base; PARTS=matrix; ETCD_TARGET=ordo
fi
OBASE=24000; ECBASE=24100; EPBASE=24200

if [[ -z $ORDO_ONLY && -z $ORDO_BASELINE ]] && ! command -v etcd >/dev/null; then
  echo "etcd is not installed. On Debian/Ubuntu: sudo apt-get install -y etcd-server" >&2
  echo "(or run ORDO_ONLY=1 $0 for ordo alone)" >&2
  exit 1
fi
command -v curl >/dev/null || { echo "curl is needed (apt-get install -y curl)" >&2; exit 1; }

BENCH_FEATURES=()
if [[ $ETCD_TARGET == etcd-grpc && -z $ORDO_ONLY ]]; then
  if ! command -v protoc >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq protobuf-compiler
    else
      echo "protoc is needed to build etcd's gRPC client: sudo apt-get install -y protobuf-compiler" >&2
      echo "(or ETCD_API=gateway $0 for etcd through its JSON gateway)" >&2
      exit 1
    fi
  fi
  BENCH_FEATURES=(--features ordo-bench/etcd-grpc)
fi
# Two builds: features are unified across the packages of one build, and etcd's client must
# not change the ordo binary under test.
cargo build --release --quiet -p ordo-bench ${BENCH_FEATURES[@]+"${BENCH_FEATURES[@]}"}
cargo build --release --quiet -p ordo
ORDO="${ORDO_UNDER_TEST:-target/release/ordo}"
ORDO_BENCH=target/release/ordo-bench
WORK=$(mktemp -d /tmp/ordo-bench.XXXXXX)
declare -A OPID EPID

cleanup() {
  for p in "${OPID[@]:-}" "${EPID[@]:-}"; do [[ -n $p ]] && kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
SCHEME=http; [[ -n $SECURE ]] && SCHEME=https
ordo_url() { echo "$SCHEME://127.0.0.1:$((OBASE + $1))"; }
etcd_url() { echo "$SCHEME://127.0.0.1:$((ECBASE + $1))"; }
# curl towards ordo and towards etcd: trusting the development CA, and (ordo) with the token.
ocurl() {
  if [[ -n $SECURE ]]; then
    curl --cacert "$WORK/certs/ca.pem" -H @<(printf 'Authorization: Bearer %s\n' "$(cat "$WORK/token")") "$@"
  else curl "$@"; fi
}
ecurl() { if [[ -n $SECURE ]]; then curl --cacert "$WORK/certs/ca.pem" "$@"; else curl "$@"; fi; }
if [[ -n $SECURE ]]; then
  "$ORDO" dev-certs --out "$WORK/certs" --node-count 3 >/dev/null
  printf 'bench-bootstrap-token-%s' "$RANDOM$RANDOM" >"$WORK/bootstrap"
  cp "$WORK/bootstrap" "$WORK/token"
fi
tls_args() { # ordo|etcd N
  [[ -n $SECURE ]] || return 0
  local c="$WORK/certs"
  if [[ $1 == ordo ]]; then
    echo "--tls-cert $c/node$2.pem --tls-key $c/node$2-key.pem --tls-ca $c/ca.pem --auth --bootstrap-token-file $WORK/bootstrap"
  else
    echo "--cert-file $c/node$2.pem --key-file $c/node$2-key.pem --peer-cert-file $c/node$2.pem --peer-key-file $c/node$2-key.pem --peer-trusted-ca-file $c/ca.pem --peer-client-cert-auth"
  fi
}
ORDO_NODES="$(ordo_url 1),$(ordo_url 2),$(ordo_url 3)"
ETCD_NODES="$(etcd_url 1),$(etcd_url 2),$(etcd_url 3)"

start_ordo() {
  local n=$1 peers="1=127.0.0.1:$((OBASE + 1)),2=127.0.0.1:$((OBASE + 2)),3=127.0.0.1:$((OBASE + 3))"
  # shellcheck disable=SC2086 # ORDO_SERVE_ARGS is a list of flags
  "$ORDO" serve --id "$n" --listen "127.0.0.1:$((OBASE + n))" --data-dir "$WORK/ordo$n" --peers "$peers" \
    --initial-cluster-state new $(tls_args ordo "$n") \
    $ORDO_SERVE_ARGS >>"$WORK/ordo$n.log" 2>&1 &
  OPID[$n]=$!
}

start_etcd() {
  local n=$1
  if [[ -n $ORDO_BASELINE ]]; then
    "$ORDO_BASELINE" serve --id "$n" --listen "127.0.0.1:$((ECBASE + n))" --data-dir "$WORK/base$n" \
      --peers "1=127.0.0.1:$((ECBASE + 1)),2=127.0.0.1:$((ECBASE + 2)),3=127.0.0.1:$((ECBASE + 3))" \
      --initial-cluster-state new $ORDO_SERVE_ARGS >>"$WORK/base$n.log" 2>&1 &
    EPID[$n]=$!
    return
  fi
  local cluster="e1=$SCHEME://127.0.0.1:$((EPBASE + 1)),e2=$SCHEME://127.0.0.1:$((EPBASE + 2)),e3=$SCHEME://127.0.0.1:$((EPBASE + 3))"
  # shellcheck disable=SC2046 # tls_args is a list of flags
  etcd --name "e$n" --data-dir "$WORK/etcd$n" \
    --listen-client-urls "$(etcd_url "$n")" --advertise-client-urls "$(etcd_url "$n")" \
    --listen-peer-urls "$SCHEME://127.0.0.1:$((EPBASE + n))" --initial-advertise-peer-urls "$SCHEME://127.0.0.1:$((EPBASE + n))" \
    $(tls_args etcd "$n") \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token ordo-bench \
    >>"$WORK/etcd$n.log" 2>&1 &
  EPID[$n]=$!
}

ordo_leader_on() { # BASE_PORT: the id of the leader of the ordo cluster on BASE+1..3
  local n
  for n in 1 2 3; do
    ocurl -fsS --max-time 1 "$SCHEME://127.0.0.1:$(($1 + n))/cluster/status" 2>/dev/null \
      | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["node_id"] if s["state"]=="leader" else "")' 2>/dev/null \
      | grep -E '^[0-9]+$' && return 0
  done
  return 1
}
ordo_leader() { ordo_leader_on "$OBASE"; }

etcd_leader() {
  local n
  if [[ -n $ORDO_BASELINE ]]; then ordo_leader_on "$ECBASE"; return; fi
  for n in 1 2 3; do
    ecurl -fsS --max-time 1 -XPOST "$(etcd_url "$n")/v3/maintenance/status" -d '{}' 2>/dev/null \
      | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sys.argv[1] if s["header"]["member_id"]==s["leader"] else "")' "$n" 2>/dev/null \
      | grep -E '^[0-9]+$' && return 0
  done
  return 1
}

wait_leader() { # $1 = ordo|etcd
  local i
  for ((i = 0; i < 300; i++)); do "${1}_leader" >/dev/null && return 0; sleep 0.1; done
  echo "$1 elected no leader in 30 s" >&2; return 1
}

applied_index() { # ordo|etcd N: the member's applied Raft index (empty if it does not answer)
  if [[ $1 == ordo ]]; then
    curl -fsS --max-time 1 "$(ordo_url "$2")/cluster/status" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_applied"] or 0)' 2>/dev/null
  else
    curl -fsS --max-time 1 -XPOST "$(etcd_url "$2")/v3/maintenance/status" -d '{}' 2>/dev/null \
      | python3 -c 'import json,sys; print(int(json.load(sys.stdin).get("raftAppliedIndex", 0)))' 2>/dev/null
  fi
}

# ordo|etcd N: until member N is back, follows a leader and has applied what the others had
# when it came back. Each failover is then measured from a steady cluster: a survivor still
# catching up would lose its first vote for a shorter log and add an election round.
wait_member() {
  local i n target=0 a
  for ((i = 0; i < 300; i++)); do
    if [[ $1 == ordo ]]; then
      curl -fsS --max-time 1 "$(ordo_url "$2")/cluster/status" 2>/dev/null | grep -q '"leader_id":[0-9]' && break
    else
      curl -fsS --max-time 1 "$(etcd_url "$2")/health" 2>/dev/null | grep -q '"health":"true"' && break
    fi
    sleep 0.1
  done
  ((i < 300)) || { echo "$1 member $2 did not rejoin in 30 s" >&2; return 1; }
  for n in 1 2 3; do
    [[ $n == "$2" ]] && continue
    a=$(applied_index "$1" "$n"); [[ ${a:-0} -gt $target ]] && target=$a
  done
  for ((i = 0; i < 300; i++)); do
    a=$(applied_index "$1" "$2"); [[ ${a:-0} -ge $target ]] && return 0
    sleep 0.1
  done
  echo "$1 member $2 did not catch up to index $target in 30 s" >&2; return 1
}

ordo_write() { # $1 node; succeeds if the write was acknowledged
  curl -fsS --max-time 3 -o /dev/null -XPOST "$(ordo_url "$1")/api/orders" -H 'Content-Type: application/json' \
    -d '{"customer_id":"failover","items":[{"sku":"f","quantity":1,"unit_price_cents":1}]}'
}
etcd_write() {
  curl -fsS --max-time 3 -o /dev/null -XPOST "$(etcd_url "$1")/v3/kv/put" -d '{"key":"ZmFpbG92ZXI=","value":"eA=="}'
}

# Time from now until the first acknowledged write through node $2: a new attempt starts
# every 50 ms (each may wait up to 3 s), so neither a slow attempt nor a server-side wait
# hides an earlier success. Prints milliseconds.
first_ack_ms() { # ordo|etcd node t0
  local sys=$1 node=$2 t0=$3 mark="$WORK/ack.$RANDOM" i
  rm -f "$mark"
  for ((i = 0; i < 400; i++)); do
    ( "${sys}_write" "$node" 2>/dev/null && { [[ -e $mark ]] || now_ms >"$mark"; } ) &
    sleep 0.05
    [[ -s $mark ]] && break
  done
  wait # this runs in a $(...) subshell: its only jobs are the attempts
  [[ -s $mark ]] || { echo "$sys: no write acknowledged within 20 s" >&2; return 1; }
  echo $(($(cat "$mark") - t0))
}

for n in 1 2 3; do start_ordo "$n"; done
[[ -z $ORDO_ONLY ]] && for n in 1 2 3; do start_etcd "$n"; done
wait_leader ordo
[[ -z $ORDO_ONLY ]] && wait_leader etcd
if [[ -n $SECURE ]]; then # the load runs as an admin, made with the bootstrap token
  ORDO_NODES="$ORDO_NODES" ORDO_CA_CERT="$WORK/certs/ca.pem" ORDO_TOKEN="$(cat "$WORK/bootstrap")" \
    "$ORDO" user add bench --role admin >"$WORK/token"
fi

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; ${ORDO_BASELINE:+base = $ORDO_BASELINE; }etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}')"
echo "# each point ${POINT_SECS}s; load from ordo-bench, closed loop (ordo: HTTP/1.1 keep-alive; $OTHER: $([[ $ETCD_TARGET == etcd-grpc ]] && echo 'gRPC, one HTTP/2 connection per member' || echo 'HTTP/1.1 keep-alive'))"

point() { # label workload concurrency: ROUNDS rounds of ordo then etcd, then their medians
  local label=$1 workload=$2 c=$3 r epath
  for ((r = 1; r <= ROUNDS; r++)); do
    "$ORDO_BENCH" --target ordo --nodes "$ORDO_NODES" --workload "$workload" --concurrency "$c" \
      ${SECURE:+--ca-cert "$WORK/certs/ca.pem" --token "$(cat "$WORK/token")"} \
      --duration-secs "$POINT_SECS" --label "$label" --json-out "$WORK/o$r.json" >/dev/null
    epath=""
    if [[ -z $ORDO_ONLY ]]; then
      epath="$WORK/e$r.json"
      "$ORDO_BENCH" --target "$ETCD_TARGET" --nodes "$ETCD_NODES" --workload "$workload" --concurrency "$c" \
        ${SECURE:+--ca-cert "$WORK/certs/ca.pem"} \
        --duration-secs "$POINT_SECS" --label "$label" --json-out "$epath" >/dev/null
    fi
    python3 - "$r" "$ROUNDS" "$WORK/o$r.json" "$epath" "$OTHER" <<'PY'
import json, sys
r, rounds, opath = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
epath, other = sys.argv[4] or None, sys.argv[5]
o = json.load(open(opath)); l = o["latency_ms"]
label = o["label"] + (f" #{r}" if rounds > 1 else "")
if epath is None:
    print(f'{label:<16} ordo {o["throughput_per_sec"]:>8.0f}/s  p50 {l["p50"]:.1f}ms p99 {l["p99"]:.1f}ms p99.9 {l["p99.9"]:.1f}ms  errors {sum(o["errors"].values())}')
else:
    e = json.load(open(epath))
    ratio = o["throughput_per_sec"] / max(e["throughput_per_sec"], 1e-9)
    print(f'{label:<16} ordo {o["throughput_per_sec"]:>7.0f}/s p99 {l["p99"]:.1f}ms  '
          f'{other} {e["throughput_per_sec"]:>7.0f}/s p99 {e["latency_ms"]["p99"]:.1f}ms  ratio {ratio:.2f}x'
          f'  (errors ordo {sum(o["errors"].values())}, {other} {sum(e["errors"].values())})')
PY
  done
  ((ROUNDS > 1)) || return 0
  python3 - "$label" "$ROUNDS" "$WORK" "${ORDO_ONLY:-}" "$OTHER" <<'PY'
import json, statistics, sys
label, rounds, work, ordo_only, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
load = lambda k: [json.load(open(f"{work}/{k}{r}.json")) for r in range(1, rounds + 1)]
med = statistics.median
o = load("o")
ot, op = med(x["throughput_per_sec"] for x in o), med(x["latency_ms"]["p99"] for x in o)
if ordo_only:
    print(f'{label:<16} median of {rounds}: ordo {ot:>8.0f}/s p99 {op:.1f}ms')
    sys.exit()
e = load("e")
et, ep = med(x["throughput_per_sec"] for x in e), med(x["latency_ms"]["p99"] for x in e)
ratios = [a["throughput_per_sec"] / max(b["throughput_per_sec"], 1e-9) for a, b in zip(o, e)]
print(f'{label:<16} median of {rounds}: ordo {ot:>7.0f}/s p99 {op:.1f}ms  {other} {et:>7.0f}/s p99 {ep:.1f}ms  '
      f'ratio {med(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x)')
PY
}

if [[ $PARTS == *matrix* ]]; then
  echo "== matrix"
  for c in 1 16 64 256; do point "create c=$c" create "$c"; done
  point "read-lin c=64" read 64
  point "read-stale c=64" read-stale 64
fi

failover() { # ordo|etcd
  local sys=$1 i times=()
  for ((i = 0; i < KILLS; i++)); do
    wait_leader "$sys"
    local leader; leader=$("${sys}_leader")
    local survivor=$((leader % 3 + 1))
    local pid; if [[ $sys == ordo ]]; then pid=${OPID[$leader]}; else pid=${EPID[$leader]}; fi
    local t0; t0=$(now_ms)
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    times+=("$(first_ack_ms "$sys" "$survivor" "$t0")")
    if [[ $sys == ordo ]]; then start_ordo "$leader"; else start_etcd "$leader"; fi
    wait_member "$sys" "$leader" # the next kill must leave a majority
  done
  printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys; v=[int(x) for x in sys.stdin]; n=len(v)
print(f"{sys.argv[1]:<5} leader SIGKILL -> first acked write: min {v[0]} ms, median {v[n//2] if n%2 else (v[n//2-1]+v[n//2])//2} ms, max {v[-1]} ms over {n} kills ({chr(32).join(map(str, v))})")' "$sys"
}

if [[ $PARTS == *failover* ]]; then
  echo "== failover ($KILLS leader kills each)"
  failover ordo
  [[ -z $ORDO_ONLY ]] && failover etcd
fi
if [[ $PARTS == *recovery* ]]; then
  echo "== recovery (ordo): node down while $RECOVERY_ORDERS orders are written"
  wait_leader ordo
  leader=$(ordo_leader); down=$((leader % 3 + 1))
  kill -9 "${OPID[$down]}"; wait "${OPID[$down]}" 2>/dev/null || true
  up_nodes=""; for n in 1 2 3; do [[ $n == "$down" ]] || up_nodes+="${up_nodes:+,}$(ordo_url "$n")"; done
  "$ORDO_BENCH" --target ordo --nodes "$up_nodes" --workload create --concurrency 64 --count "$RECOVERY_ORDERS" --label "load while down"
  target=$(curl -fsS "$(ordo_url "$leader")/cluster/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_applied"])')
  t0=$(now_ms); start_ordo "$down"
  for ((i = 0; i < 6000; i++)); do
    a=$(curl -fsS --max-time 1 "$(ordo_url "$down")/cluster/status" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_applied"] or 0)' 2>/dev/null || echo 0)
    [[ $a -ge $target ]] && break
    sleep 0.1
  done
  echo "node $down caught up to index $target in $(( $(now_ms) - t0 )) ms"
  for n in 1 2 3; do
    echo "node $n: on disk $(du -sb "$WORK/ordo$n" | cut -f1) bytes, peak RSS $(awk '/VmHWM/{print $2, $3}' /proc/"${OPID[$n]}"/status)"
  done
fi

if [[ $PARTS == *memory* ]]; then
  # MEMORY_ORDERS creates at c=64 into the cluster, each node's RSS sampled every 10 s: does
  # a node's memory stay bounded as the store grows? Run it on a fresh cluster:
  #   PARTS=memory ORDO_ONLY=1 scripts/bench-vs-etcd.sh
  echo "== memory (ordo): RSS while $MEMORY_ORDERS orders are written"
  wait_leader ordo
  "$ORDO_BENCH" --target ordo --nodes "$ORDO_NODES" --workload create --concurrency 64 \
    --count "$MEMORY_ORDERS" --label "memory load" >"$WORK/memory-bench.txt" 2>&1 &
  bench_pid=$!
  t0=$(now_ms)
  for ((i = 0; i < 360; i++)); do # an hour at most
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 10
    stored=$(curl -fsS --max-time 2 "$(ordo_url 1)/api/orders?per_page=1&consistency=stale" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo "?")
    line="$(( ($(now_ms) - t0) / 1000 )) s, $stored orders:"
    for n in 1 2 3; do line+=" node $n $(awk '/VmRSS/{print int($2/1024)}' /proc/"${OPID[$n]}"/status) MB"; done
    echo "$line"
  done
  kill "$bench_pid" 2>/dev/null || true # still running only if the hour ran out
  wait "$bench_pid" || true
  tail -1 "$WORK/memory-bench.txt"
  for n in 1 2 3; do
    echo "node $n: on disk $(du -sb "$WORK/ordo$n" | cut -f1) bytes, peak RSS $(awk '/VmHWM/{print $2, $3}' /proc/"${OPID[$n]}"/status)"
  done
fi
