#!/usr/bin/env bash
# A Ray cluster on this one machine, to try multi-node searches on a laptop:
#   cluster/local.sh up N     a head (no CPUs for trials) and N worker nodes with 1 CPU each
#   cluster/local.sh down     stop every node
# AUTOPRUNE_LATENCY_NODE=NAME adds one more node, with no CPUs for trials, advertising the custom resource NAME:
# a search with 'latency.target: NAME' times every candidate there (a stand-in for the device you ship to).
# The dashboard and job server listen on 127.0.0.1 only; Ray's token authentication stays on.
# Then: autoprune submit search_spaces/resnet20_fashionmnist.yaml --address http://127.0.0.1:8265
set -euo pipefail

RAY=${RAY:-ray}
HEAD_PORT=${AUTOPRUNE_HEAD_PORT:-6380}          # GCS; outside Ray's worker port range (10002-19999)
DASHBOARD_PORT=${AUTOPRUNE_DASHBOARD_PORT:-8265}
CPUS_PER_WORKER=${AUTOPRUNE_WORKER_CPUS:-1}
TEMP_DIR=${AUTOPRUNE_RAY_TEMP_DIR:-/tmp/autoprune-ray}   # this cluster's own: 'down' stops only its processes
export RAY_AUTH_MODE=token
# Jobs run "python -m autoprune.cli": use the Python that runs this cluster (e.g. the project's .venv).
RAY_BIN=$(command -v "$RAY") || { echo "$0: '$RAY' not found (activate the venv or set RAY=.venv/bin/ray)" >&2; exit 2; }
export PATH="$(cd "$(dirname "$RAY_BIN")" && pwd):$PATH"

# Each node on this host needs its own ports: node i uses 20000 + 100 i + {1..99} (the head is node 0).
node_ports() {
  local base=$((20000 + 100 * $1))
  echo "--node-manager-port=$((base + 1)) --object-manager-port=$((base + 2)) --runtime-env-agent-port=$((base + 3))" \
    "--dashboard-agent-grpc-port=$((base + 4)) --dashboard-agent-listen-port=$((base + 5))" \
    "--metrics-export-port=$((base + 6)) --min-worker-port=$((base + 10)) --max-worker-port=$((base + 99))"
}

usage() { echo "usage: $0 up N | down" >&2; exit 2; }

up() {
  local n=$1
  [[ $n =~ ^[0-9]+$ ]] || usage
  # shellcheck disable=SC2046
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$HEAD_PORT" --temp-dir="$TEMP_DIR" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
    --ray-client-server-port=$((20000 + 7)) --num-cpus=0 --disable-usage-stats $(node_ports 0) >/dev/null
  for ((i = 1; i <= n; i++)); do
    # shellcheck disable=SC2046
    "$RAY" start --address="127.0.0.1:$HEAD_PORT" --node-ip-address=127.0.0.1 --num-cpus="$CPUS_PER_WORKER" \
      --disable-usage-stats $(node_ports "$i") >/dev/null
  done
  if [[ -n "${AUTOPRUNE_LATENCY_NODE:-}" ]]; then
    # shellcheck disable=SC2046
    "$RAY" start --address="127.0.0.1:$HEAD_PORT" --node-ip-address=127.0.0.1 --num-cpus=0 \
      --resources="{\"$AUTOPRUNE_LATENCY_NODE\": 1}" --disable-usage-stats $(node_ports $((n + 1))) >/dev/null
    echo "latency node: resource '$AUTOPRUNE_LATENCY_NODE' (use --set latency.target=$AUTOPRUNE_LATENCY_NODE)"
  fi
  echo "Ray cluster up: head 127.0.0.1:$HEAD_PORT, $n worker node(s) with $CPUS_PER_WORKER CPU(s) each"
  echo "dashboard and job server: http://127.0.0.1:$DASHBOARD_PORT (token: ~/.ray/auth_token)"
}

case "${1:-}" in
  up) [[ $# -eq 2 ]] || usage; up "$2" ;;
  down)
    # not 'ray stop', which stops every Ray instance on the machine: only this cluster's processes
    pkill -f -- "$TEMP_DIR" || true
    sleep 2
    pkill -9 -f -- "$TEMP_DIR" || true
    # forget it as this machine's "current cluster", so a later ray.init() does not try to join it
    if grep -qs ":$HEAD_PORT\$" /tmp/ray/ray_current_cluster; then rm -f /tmp/ray/ray_current_cluster; fi
    echo "Ray cluster down" ;;
  *) usage ;;
esac
