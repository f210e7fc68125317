#!/usr/bin/env bash
# A local three-node ordo cluster on 127.0.0.1.
#
#   scripts/cluster.sh up [--secure] | down | status | nodes | url N | kill N | stop N | start N | pause N | resume N | logs N
#
# up     builds the release binary (unless ORDO_BIN names one), starts nodes 1-3 on ports
#        $ORDO_BASE_PORT+N (default 21000, so 21001-21003), waits (bounded) for a leader,
#        prints the status table and the ORDO_NODES to export for the CLI.
#        --secure: HTTPS for clients and peers, with development certificates made by
#        `ordo dev-certs` under $ORDO_RUN_DIR/certs/, and users (--auth): an admin user is
#        made on the first start, its token kept in $ORDO_RUN_DIR/admin-token (remembered
#        for later commands).
# down   stops every node (SIGTERM, then SIGKILL after 10 s) — the data stays.
# status `ordo cluster status` of the nodes (exit 0 healthy, 8 degraded, 6 none answers).
# nodes  prints the nodes' URLs, comma-separated (for the CLI: `export ORDO_NODES=$(...)`).
# url    prints node N's URL (for curl: `curl -s $(scripts/cluster.sh url 1)/readyz`).
# kill   SIGKILL, stop SIGTERM, pause SIGSTOP, resume SIGCONT; start restarts a node.
# Each node keeps its data, log and pid under $ORDO_RUN_DIR/nN/ (default .ordo-cluster/).
# `up` records the base port there, so later commands (in any shell) use the cluster's ports.
# ORDO_BIN: the ordo binary to run (default target/release/ordo, built by `up`); each node
# remembers the binary it was started from, so `down` stops it whatever ORDO_BIN says then.
# Only processes this script started (by the pid it recorded) are ever signalled.
set -euo pipefail

cd "$(dirname "$0")/.."
RUN_DIR="${ORDO_RUN_DIR:-.ordo-cluster}"
BIN="${ORDO_BIN:-target/release/ordo}"
# Absolute (a relative one is the repository's), so the paths printed for the CLI work from
# any directory.
[[ $RUN_DIR == /* ]] || RUN_DIR="$PWD/$RUN_DIR"
[[ $BIN == /* ]] || BIN="$PWD/$BIN"
NODES=(1 2 3)
# The base port: the one `up` recorded for this cluster, else ORDO_BASE_PORT, else 21000.
# A different ORDO_BASE_PORT for a recorded cluster is refused: `start N` would otherwise
# start a node on another port over the same data.
RECORDED_PORT=$(cat "$RUN_DIR/base-port" 2>/dev/null || true)
BASE_PORT="${RECORDED_PORT:-${ORDO_BASE_PORT:-21000}}"
if [[ -n $RECORDED_PORT && -n ${ORDO_BASE_PORT:-} && $ORDO_BASE_PORT != "$RECORDED_PORT" ]]; then
  echo "the cluster in $RUN_DIR runs on base port $RECORDED_PORT, not ORDO_BASE_PORT=$ORDO_BASE_PORT;" >&2
  echo "unset ORDO_BASE_PORT, choose another ORDO_RUN_DIR for a second cluster, or remove" >&2
  echo "$RUN_DIR (its data too) to start afresh on other ports" >&2
  exit 2
fi

port() { echo $((BASE_PORT + $1)); }
addr() { echo "127.0.0.1:$(port "$1")"; }
peers() { local p="" n; for n in "${NODES[@]}"; do p+="${p:+,}$n=$(addr "$n")"; done; echo "$p"; }
pidfile() { echo "$RUN_DIR/n$1/pid"; }
# The binary node N was started from: `down` and the others find the node by it, whatever
# ORDO_BIN says now.
binfile() { echo "$RUN_DIR/n$1/bin"; }
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
# Sets TLS_ARGS to node $1's TLS and user flags (none for a plain cluster); an array, so
# paths with spaces stay whole.
TLS_ARGS=()
set_tls_args() {
  TLS_ARGS=()
  secure || return 0
  TLS_ARGS=(--tls-cert "$RUN_DIR/certs/node$1.pem" --tls-key "$RUN_DIR/certs/node$1-key.pem"
    --tls-ca "$RUN_DIR/certs/ca.pem")
  # The revocation list `ordo dev-certs` makes (empty until `ordo dev-certs --revoke NAME`).
  if [[ -f $RUN_DIR/certs/crl.pem ]]; then TLS_ARGS+=(--tls-crl "$RUN_DIR/certs/crl.pem"); fi
  TLS_ARGS+=(--auth --bootstrap-token-file "$RUN_DIR/bootstrap-token")
}
# The token this script calls the nodes with: the admin's, or the bootstrap one before it.
script_token() {
  if [[ -s $RUN_DIR/admin-token ]]; then cat "$RUN_DIR/admin-token"; else cat "$RUN_DIR/bootstrap-token"; fi
}

# Whether process $1 exists and is not a zombie (killed, and nobody has reaped it yet).
process_alive() {
  [[ -n $1 && -d /proc/$1 && "$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null)" != Z ]]
}

running_pid() {
  # Prints the node's pid if the process recorded in its pid file is still an ordo process.
  local f; f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  local pid; pid=$(cat "$f")
  process_alive "$pid" || return 1
  # The kernel keeps the first 15 bytes of the binary's name.
  local bin=$BIN
  [[ -s $(binfile "$1") ]] && bin=$(cat "$(binfile "$1")")
  local comm; comm=$(basename "$bin"); comm=${comm:0:15}
  [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$comm" ]] || return 1
  echo "$pid"
}

check_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || { echo "usage: $0 $2 N   (N in 1..3)" >&2; exit 2; }
}

start_node() { # N [new]: `new` lets the node form the cluster if its data directory is empty
  local n=$1 state=existing
  [[ ${2:-} == new ]] && state=new
  if pid=$(running_pid "$n"); then echo "node $n already running (pid $pid)"; return 0; fi
  # Something this script did not start (a node of another ORDO_BIN, another program) holding
  # the port would answer in the new node's place while the new node exits.
  if timeout 2 bash -c ": </dev/tcp/127.0.0.1/$(port "$n")" 2>/dev/null; then
    echo "$(addr "$n") is already taken, not by a node this script knows in $RUN_DIR;" >&2
    echo "stop it first (a node an older version of this script started with another" >&2
    echo "ORDO_BIN: ORDO_BIN=<that binary> $0 down), or choose another ORDO_BASE_PORT" >&2
    exit 1
  fi
  # A node with no data joins a cluster that exists (a wiped node, to be added again). With
  # no cluster yet (no node has data: before `up`), it would wait for ever.
  if [[ $state == existing ]] && ! compgen -G "$RUN_DIR/n*/data" >/dev/null; then
    echo "no node has data in $RUN_DIR: start the cluster with \`$0 up\` first" >&2
    exit 1
  fi
  mkdir -p "$RUN_DIR/n$n"
  set_tls_args "$n"
  nohup "$BIN" serve --id "$n" --listen "$(addr "$n")" --data-dir "$RUN_DIR/n$n/data" \
    --peers "$(peers)" --initial-cluster-state "$state" "${TLS_ARGS[@]}" \
    >>"$RUN_DIR/n$n/node.log" 2>&1 </dev/null &
  echo "$BIN" >"$(binfile "$n")"
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

node_urls() { local u="" n; for n in "${NODES[@]}"; do u+="${u:+,}$(url "$n")"; done; echo "$u"; }

# The CLI's own status table (the same columns and words as `ordo cluster status`).
status_table() {
  [[ -x $BIN ]] || { echo "$BIN is not built yet: run $0 up (or set ORDO_BIN)" >&2; return 1; }
  if secure; then
    ORDO_CA_CERT=$RUN_DIR/certs/ca.pem ORDO_TOKEN=$(script_token) "$BIN" cluster status --nodes "$(node_urls)" --timeout-ms 2000
  else
    "$BIN" cluster status --nodes "$(node_urls)" --timeout-ms 2000
  fi
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
    command -v curl >/dev/null || { echo "curl is needed (apt-get install -y curl)" >&2; exit 1; }
    if [[ -z "${ORDO_BIN:-}" ]]; then
      command -v cargo >/dev/null || { echo "cargo is needed to build ordo (or set ORDO_BIN to an ordo binary)" >&2; exit 1; }
      echo "building $BIN (the first build takes a few minutes)"
      cargo build --release -p ordo --bin ordo
    fi
    [[ -x $BIN ]] || { echo "ORDO_BIN=$BIN is not an executable" >&2; exit 1; }
    mkdir -p "$RUN_DIR"
    echo "$BASE_PORT" >"$RUN_DIR/base-port"
    case "${2:-}" in
      "")
        if secure; then
          echo "(this cluster was made with --secure and stays so: rm -rf $RUN_DIR for a plain one)"
        fi
        ;;
      --secure)
        mkdir -p "$RUN_DIR"
        "$BIN" dev-certs --out "$RUN_DIR/certs" --node-count "${#NODES[@]}" >/dev/null
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
      status_table || true
      echo
      nodes=$(node_urls)
      if secure; then
        if [[ ! -s $RUN_DIR/admin-token ]]; then
          # The first admin, made with the bootstrap token (which stops working then).
          (umask 077; ORDO_NODES=$nodes ORDO_CA_CERT=$RUN_DIR/certs/ca.pem \
            ORDO_TOKEN=$(cat "$RUN_DIR/bootstrap-token") \
            "$BIN" user add admin --role admin >"$RUN_DIR/admin-token.new" 2>/dev/null) \
            && mv "$RUN_DIR/admin-token.new" "$RUN_DIR/admin-token"
        fi
        echo "TLS and users: for the CLI (the admin's token is in $RUN_DIR/admin-token),"
        printf '  export ORDO_NODES=%s ORDO_CA_CERT=%q ORDO_CA_CRL=%q ORDO_TOKEN=$(cat %q)\n' \
          "$nodes" "$RUN_DIR/certs/ca.pem" "$RUN_DIR/certs/crl.pem" "$RUN_DIR/admin-token"
        echo "try: curl -s --cacert $RUN_DIR/certs/ca.pem -H \"Authorization: Bearer \$ORDO_TOKEN\" \\"
        echo "       -XPOST $(url 1)/api/orders -H 'Content-Type: application/json' \\"
      else
        if [[ $BASE_PORT != 21000 ]]; then
          echo "for the CLI (these are not the default ports): export ORDO_NODES=$nodes"
        fi
        echo "try: curl -s -XPOST $(url 1)/api/orders -H 'Content-Type: application/json' \\"
      fi
      echo "       -d '{\"customer_id\":\"alice\",\"items\":[{\"sku\":\"book\",\"quantity\":1,\"unit_price_cents\":1250}]}'"
    else
      echo "no leader within 30 s; see the logs under $RUN_DIR/" >&2
      status_table || true
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
    left=0
    for n in "${NODES[@]}"; do
      if ! wait_stopped "$n"; then signal_node "$n" KILL "killed after 10 s"; fi
      pid=$(cat "$(pidfile "$n")" 2>/dev/null) || pid=""
      if [[ ! -s $(binfile "$n") ]] && process_alive "$pid"; then
        # Started by an older version of this script, from another binary than $BIN: keep
        # its record rather than lose the only way to stop it.
        echo "node $n (pid $pid) is not $BIN: left running; ORDO_BIN=<its binary> $0 down" >&2
        left=1
      else
        rm -f "$(pidfile "$n")"
      fi
    done
    ((left == 0)) || exit 1
    echo "cluster stopped (data kept in $RUN_DIR; rm -rf it for a fresh start)"
    ;;
  status) status_table ;;
  nodes) node_urls ;;
  url) check_node "${2:-}" url; url "$2" ;;
  kill) check_node "${2:-}" kill; signal_node "$2" KILL "SIGKILL" ;;
  stop)
    check_node "${2:-}" stop
    signal_node "$2" TERM "SIGTERM"
    # A paused node must run to hear SIGTERM.
    if pid=$(running_pid "$2"); then kill -CONT "$pid" 2>/dev/null || true; fi
    wait_stopped "$2" || true
    ;;
  pause) check_node "${2:-}" pause; signal_node "$2" STOP "paused (SIGSTOP)" ;;
  resume) check_node "${2:-}" resume; signal_node "$2" CONT "resumed (SIGCONT)" ;;
  start) check_node "${2:-}" start; start_node "$2" ;;
  logs) check_node "${2:-}" logs; tail -n 50 "$RUN_DIR/n$2/node.log" ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
