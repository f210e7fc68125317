#!/usr/bin/env bash
# A local three-node ordo cluster on 127.0.0.1.
#
#   scripts/cluster.sh up [--secure] | down | status | kill N | stop N | start N | pause N | resume N | logs N
#
# up     builds the release binary, starts nodes 1-3 on ports $ORDO_BASE_PORT+N (default 21000,
#        so 21001-21003), waits (bounded) for a leader and prints a status table.
#        --secure: HTTPS for clients and peers, with development certificates made by
#        `ordo dev-certs` under $ORDO_RUN_DIR/certs/, and users (--auth): an admin user is
#        made on the first start, its token kept in $ORDO_RUN_DIR/admin-token (remembered
#        for later commands).
# down   stops every node (SIGTERM, then SIGKILL after 10 s) — the data stays.
# kill   SIGKILL, stop SIGTERM, pause SIGSTOP, resume SIGCONT; start restarts a node.
# Each node keeps its data, log and pid under $ORDO_RUN_DIR/nN/ (default .ordo-cluster/).
# Only processes this script started (by the pid it recorded) are ever signalled.
set -euo pipefail

cd "$(dirname "$0")/.."
BASE_PORT="${ORDO_BASE_PORT:-21000}"
RUN_DIR="${ORDO_RUN_DIR:-.ordo-cluster}"
BIN="${ORDO_BIN:-target/release/ordo}"
NODES=(1 2 3)

port() { echo $((BASE_PORT + $1)); }
addr() { echo "127.0.0.1:$(port "$1")"; }
peers() { local p="" n; for n in "${NODES[@]}"; do p+="${p:+,}$n=$(addr "$n")"; done; echo "$p"; }
pidfile() { echo "$RUN_DIR/n$1/pid"; }
secure() { [[ -f $RUN_DIR/secure ]]; }
scheme() { if secure; then echo https; else echo http; fi; }
url() { echo "$(scheme)://$(addr "$1")"; }
# curl against a node, trusting the development CA when the cluster is secure.
node_curl() {
  if secure; then
    curl --cacert "$RUN_DIR/certs/ca.pem" -H @<(printf 'Authorization: Bearer %s\n' "$(script_token)") "$@"
  else
    curl "$@"
  fi
}
tls_flags() {
  secure || return 0
  echo "--tls-cert $RUN_DIR/certs/node$1.pem --tls-key $RUN_DIR/certs/node$1-key.pem --tls-ca $RUN_DIR/certs/ca.pem"
  echo "--auth --bootstrap-token-file $RUN_DIR/bootstrap-token"
}
# The token this script calls the nodes with: the admin's, or the bootstrap one before it.
script_token() {
  if [[ -s $RUN_DIR/admin-token ]]; then cat "$RUN_DIR/admin-token"; else cat "$RUN_DIR/bootstrap-token"; fi
}

running_pid() {
  # Prints the node's pid if the process recorded in its pid file is still an ordo process.
  local f; f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  local pid; pid=$(cat "$f")
  [[ -n $pid && -d /proc/$pid ]] || return 1
  [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == ordo ]] || return 1
  # A killed node that nobody has reaped yet is a zombie: it is not running.
  [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]] || return 1
  echo "$pid"
}

check_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || { echo "usage: $0 $2 N   (N in 1..3)" >&2; exit 2; }
}

start_node() { # N [new]: `new` lets the node form the cluster if its data directory is empty
  local n=$1 state=existing
  [[ ${2:-} == new ]] && state=new
  if pid=$(running_pid "$n"); then echo "node $n already running (pid $pid)"; return 0; fi
  mkdir -p "$RUN_DIR/n$n"
  # shellcheck disable=SC2046 # tls_flags is a list of flags (paths without spaces)
  nohup "$BIN" serve --id "$n" --listen "$(addr "$n")" --data-dir "$RUN_DIR/n$n/data" \
    --peers "$(peers)" --initial-cluster-state "$state" $(tls_flags "$n") \
    >>"$RUN_DIR/n$n/node.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$n")"
  echo "node $n started (pid $!, $(url "$n"), log $RUN_DIR/n$n/node.log)"
}

signal_node() {
  local n=$1 sig=$2 what=$3
  if pid=$(running_pid "$n"); then
    kill -s "$sig" "$pid"
    echo "node $n ($pid): $what"
  else
    echo "node $n is not running"
  fi
}

wait_stopped() {
  local n=$1 i
  for ((i = 0; i < 100; i++)); do running_pid "$n" >/dev/null || return 0; sleep 0.1; done
  return 1
}

status_table() {
  printf '%-5s %-16s %-10s %-7s %-6s %-9s %-8s\n' NODE ADDRESS ROLE LEADER TERM LAST_LOG APPLIED
  local n
  for n in "${NODES[@]}"; do
    local s
    if s=$(node_curl -fsS --max-time 2 "$(url "$n")/cluster/status" 2>/dev/null); then
      python3 - "$n" "$(addr "$n")" "$s" <<'PY'
import json, sys
n, a, s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
f = lambda v: "-" if v is None else str(v)
print(f"{n:<5} {a:<16} {s['state']:<10} {f(s['leader_id']):<7} {s['term']:<6} {f(s['last_log_index']):<9} {f(s['last_applied']):<8}")
PY
    else
      local state=down
      running_pid "$n" >/dev/null && state=unreachable
      printf '%-5s %-16s %-10s\n' "$n" "$(addr "$n")" "$state"
    fi
  done
}

wait_for_leader() {
  # Until every running node knows the leader (so the table shows the formed cluster).
  local i n known
  for ((i = 0; i < 300; i++)); do
    known=0
    for n in "${NODES[@]}"; do
      if node_curl -fsS --max-time 1 "$(url "$n")/cluster/status" 2>/dev/null | grep -q '"leader_id":[0-9]'; then
        known=$((known + 1))
      elif ! running_pid "$n" >/dev/null; then
        known=$((known + 1)) # a node that is down cannot tell
      fi
    done
    [[ $known -eq ${#NODES[@]} ]] && return 0
    sleep 0.1
  done
  return 1
}

cmd="${1:-}"
case "$cmd" in
  up)
    command -v cargo >/dev/null || { echo "cargo is needed to build ordo" >&2; exit 1; }
    command -v curl >/dev/null || { echo "curl is needed (apt-get install -y curl)" >&2; exit 1; }
    if [[ -z "${ORDO_BIN:-}" ]]; then cargo build --release --quiet -p ordo --bin ordo; fi
    case "${2:-}" in
      "") ;;
      --secure)
        mkdir -p "$RUN_DIR"
        "$BIN" dev-certs --out "$RUN_DIR/certs" --nodes "${#NODES[@]}" >/dev/null
        if [[ ! -s $RUN_DIR/bootstrap-token ]]; then
          (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RUN_DIR/bootstrap-token")
        fi
        touch "$RUN_DIR/secure"
        ;;
      *) echo "usage: $0 up [--secure]" >&2; exit 2 ;;
    esac
    for n in "${NODES[@]}"; do start_node "$n" new; done
    if wait_for_leader; then
      echo "cluster is up:"
      status_table
      echo
      if secure; then
        nodes=""; for n in "${NODES[@]}"; do nodes+="${nodes:+,}$(url "$n")"; done
        if [[ ! -s $RUN_DIR/admin-token ]]; then
          # The first admin, made with the bootstrap token (which stops working then).
          (umask 077; ORDO_NODES=$nodes ORDO_CA_CERT=$RUN_DIR/certs/ca.pem \
            ORDO_TOKEN=$(cat "$RUN_DIR/bootstrap-token") \
            "$BIN" user add admin --role admin >"$RUN_DIR/admin-token.new" 2>/dev/null) \
            && mv "$RUN_DIR/admin-token.new" "$RUN_DIR/admin-token"
        fi
        echo "TLS and users: for the CLI (the admin's token is in $RUN_DIR/admin-token),"
        echo "  export ORDO_NODES=$nodes ORDO_CA_CERT=$RUN_DIR/certs/ca.pem ORDO_TOKEN=\$(cat $RUN_DIR/admin-token)"
        echo "try: curl -s --cacert $RUN_DIR/certs/ca.pem -H \"Authorization: Bearer \$ORDO_TOKEN\" \\"
        echo "       -XPOST $(url 1)/api/orders -H 'Content-Type: application/json' \\"
      else
        echo "try: curl -s -XPOST $(url 1)/api/orders -H 'Content-Type: application/json' \\"
      fi
      echo "       -d '{\"customer_id\":\"alice\",\"items\":[{\"sku\":\"book\",\"quantity\":1,\"unit_price_cents\":1250}]}'"
    else
      echo "no leader within 30 s; see the logs under $RUN_DIR/" >&2
      status_table
      exit 1
    fi
    ;;
  down)
    for n in "${NODES[@]}"; do
      if pid=$(running_pid "$n"); then
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true # a paused node must run to hear SIGTERM
      fi
    done
    for n in "${NODES[@]}"; do
      if ! wait_stopped "$n"; then signal_node "$n" KILL "killed after 10 s"; fi
      rm -f "$(pidfile "$n")"
    done
    echo "cluster stopped (data kept in $RUN_DIR; rm -rf it for a fresh start)"
    ;;
  status) status_table ;;
  kill) check_node "${2:-}" kill; signal_node "$2" KILL "SIGKILL" ;;
  stop) check_node "${2:-}" stop; signal_node "$2" TERM "SIGTERM"; wait_stopped "$2" || true ;;
  pause) check_node "${2:-}" pause; signal_node "$2" STOP "paused (SIGSTOP)" ;;
  resume) check_node "${2:-}" resume; signal_node "$2" CONT "resumed (SIGCONT)" ;;
  start) check_node "${2:-}" start; start_node "$2" ;;
  logs) check_node "${2:-}" logs; tail -n 50 "$RUN_DIR/n$2/node.log" ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
