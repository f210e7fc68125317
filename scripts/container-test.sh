#!/usr/bin/env bash
# Builds the container image (deploy/Containerfile) and tests it: three nodes in containers
# on a network of their own, addressed by name (node1:7000 ...), each with a named volume;
# orders written and read through two containers; the leader's container stopped and the
# failover checked; everything removed at the end, also on failure.
#
#   scripts/container-test.sh        (as root; installs podman, runc and debootstrap if missing)
#
# Part of the README's test command. Where containers cannot be tested at all (not root and
# the tools missing, podman unable to run a container, no Debian mirror for the base image)
# it prints a loud "SKIPPED: <why>" and exits 0: no verdict on ordo. Any other failure fails.
skip() {
  echo "SKIPPED: the container test: $*; the image is untested here" >&2
  rm -rf "${WORK:-/nonexistent}"
  exit 0
}
#
# No registry can be pulled from on the machines this runs on, so the base image is made
# here: a minimal Debian by debootstrap, imported into podman (cached as ordo-base:bookworm).
# Containers run with runc and ulimits within this machine's hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="ordo-ctest-$$"
IMAGE="localhost/ordo:ctest"
BASE_IMAGE="localhost/ordo-base:bookworm"
BASE_PORT="${ORDO_CTEST_BASE_PORT:-27000}"
WORK=$(mktemp -d /tmp/ordo-ctest.XXXXXX)
# runc (crun fails on this kind of machine's hybrid cgroups), ulimits within the hard
# limits, and health checks run on demand (no systemd here to run them on a timer).
RUN=(--runtime runc --ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096" --health-interval disable)

need() { command -v "$1" >/dev/null || NEED+=("$2"); }
NEED=()
need podman podman; need runc runc; need debootstrap debootstrap; need curl curl; need python3 python3
if ((${#NEED[@]})); then
  [[ $(id -u) == 0 ]] || skip "not root, and ${NEED[*]} missing" 
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED[@]}" >/dev/null
fi

cleanup() {
  local n
  for n in 1 2 3; do podman rm -f -t 0 "$PREFIX-node$n" >/dev/null 2>&1 || true; done
  for n in 1 2 3; do podman volume rm -f "$PREFIX-data$n" >/dev/null 2>&1 || true; done
  podman network rm -f "$PREFIX-net" >/dev/null 2>&1 || true
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! podman image exists "$BASE_IMAGE"; then
  echo "making the base image (debootstrap, minbase)"
  # The one download of the test (like apt's): without the Debian mirror there is no image to
  # test, which is no verdict on ordo.
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; skip "no base image (debootstrap failed)"; }
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

# Can this machine run a container at all? If not, that is no verdict on the image.
if ! why=$(podman run --rm "${RUN[@]}" --network none "$BASE_IMAGE" true 2>&1); then
  skip "podman cannot run a container here: $why"
fi

echo "building the release binary and the image"
cargo build --release --quiet -p ordo --bin ordo
mkdir -p "$WORK/context"
cp target/release/ordo deploy/Containerfile "$WORK/context/"
podman build -q --runtime runc --format docker --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" -f "$WORK/context/Containerfile" "$WORK/context" >/dev/null

podman network create "$PREFIX-net" >/dev/null
port() { echo $((BASE_PORT + $1)); }
url() { echo "http://127.0.0.1:$(port "$1")"; }
start() {
  local n=$1
  podman volume create "$PREFIX-data$n" >/dev/null 2>&1 || true
  podman run -d "${RUN[@]}" --name "$PREFIX-node$n" --hostname "node$n" \
    --network "$PREFIX-net" --network-alias "node$n" \
    -p "127.0.0.1:$(port "$n"):7000" -v "$PREFIX-data$n:/var/lib/ordo" \
    -e ORDO_LISTEN=0.0.0.0:7000 -e ORDO_DATA_DIR=/var/lib/ordo -e ORDO_INSECURE=true \
    -e ORDO_PEERS=1=node1:7000,2=node2:7000,3=node3:7000 -e ORDO_INITIAL_CLUSTER_STATE=new \
    "$IMAGE" serve --id "$n" --advertise "node$n:7000" >/dev/null
}
leader_of() { # the leader id node $1 reports, if any
  curl -fsS --max-time 2 "$(url "$1")/cluster/status" 2>/dev/null \
    | python3 -c 'import json,sys; l=json.load(sys.stdin)["leader_id"]; print(l if l else "")' 2>/dev/null
}
wait_leader() { # among nodes "$@": prints the leader once all of them agree on one of them
  # (one of them: just after the leader stops, the survivors still name it until they elect)
  local i n l agreed
  for ((i = 0; i < 300; i++)); do
    agreed=""
    for n in "$@"; do
      l=$(leader_of "$n") || l=""
      [[ -n $l && ( -z $agreed || $agreed == "$l" ) ]] || { agreed=""; break; }
      agreed=$l
    done
    [[ -n $agreed && " $* " == *" $agreed "* ]] && { echo "$agreed"; return 0; }
    sleep 0.2
  done
  echo "no leader agreed among nodes $* within 60 s" >&2
  for n in 1 2 3; do echo "--- node$n" >&2; podman logs --tail 20 "$PREFIX-node$n" >&2 || true; done
  return 1
}
create() { # node customer: succeeds on 201, prints the order id
  curl -fsS --max-time 10 -XPOST "$(url "$1")/api/orders" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: ctest-$2" \
    -d "{\"customer_id\":\"$2\",\"items\":[{\"sku\":\"c\",\"quantity\":1,\"unit_price_cents\":100}]}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
create_retrying() { # node customer: retries (same key) while the cluster fails over
  local i
  for ((i = 0; i < 100; i++)); do create "$@" 2>/dev/null && return 0; sleep 0.3; done
  echo "no create acknowledged through node $1 within 30 s" >&2; return 1
}

for n in 1 2 3; do start "$n"; done
leader=$(wait_leader 1 2 3)
echo "cluster up in containers, leader node$leader; addresses are names:"
curl -fsS "$(url 1)/cluster/status" | python3 -c 'import json,sys; print("  members", json.load(sys.stdin)["members"])'
podman healthcheck run "$PREFIX-node$leader" >/dev/null || { echo "the image's health check failed" >&2; exit 1; }
echo "the image's health check passes"

first=$(create 2 before-failover)
got=$(curl -fsS "$(url 3)/api/orders/$first" | python3 -c 'import json,sys; print(json.load(sys.stdin)["customer_id"])')
[[ $got == before-failover ]] || { echo "node3 read '$got' for order $first" >&2; exit 1; }
echo "order $first written through node2, read through node3"

echo "stopping the leader's container (node$leader)"
podman stop -t 5 "$PREFIX-node$leader" >/dev/null
survivors=(); for n in 1 2 3; do [[ $n == "$leader" ]] || survivors+=("$n"); done
new_leader=$(wait_leader "${survivors[@]}") # fails unless a survivor leads within 60 s
second=$(create_retrying "${survivors[0]}" after-failover)
for id in "$first" "$second"; do
  curl -fsS "$(url "${survivors[1]}")/api/orders/$id" >/dev/null \
    || { echo "order $id missing on node${survivors[1]}" >&2; exit 1; }
done
echo "failover to node$new_leader; orders $first and $second read through node${survivors[1]}"

podman start "$PREFIX-node$leader" >/dev/null
wait_leader 1 2 3 >/dev/null
echo "node$leader back; container test passed"
