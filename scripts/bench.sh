#!/usr/bin/env bash
# ordo alone: a fresh three-node release cluster on loopback, the standard matrix (creates at
# concurrency 1, 16, 64, 256; linearizable and stale reads at 64), failover and recovery figures.
# See scripts/bench-vs-etcd.sh for the knobs; this runs it with ORDO_ONLY=1.
set -euo pipefail
ORDO_ONLY=1 exec "$(dirname "$0")/bench-vs-etcd.sh" "$@"
