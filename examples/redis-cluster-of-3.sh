#!/usr/bin/env bash
# Three wslb instances on one machine (on loopback) sharing one Redis, in
# front of two echo workers that this script starts (a static pool: every
# instance sends users to the same workers, and a user is sticky whichever
# instance it comes in by).
#
#   redis-server &                          # or point WSLB_REDIS_URL at yours
#   examples/redis-cluster-of-3.sh          # runs until Ctrl-C, which stops all it started
#   examples/redis-cluster-of-3.sh --check  # starts all, waits for every /healthz 200, stops, exits 0
#   examples/redis-cluster-of-3.sh --set pool.capacity=4   # further arguments go to every instance
#
# Then connect to any instance: ws://127.0.0.1:8080/?session=alice (or :8090, :8100).
#
# Environment (defaults in brackets):
#   WSLB_REDIS_URL  the shared registry                        [redis://127.0.0.1:6379/0]
#   INSTANCE_PORTS  LISTEN:ADMIN port pair of each instance    ["8080:8081 8090:8091 8100:8101"]
#   WORKER_PORTS    the echo workers' ports                    ["9001 9002"]
#   LOG_DIR         one log file per process                   [./wslb-cluster-logs]
#   TWISTD, PYTHON  the commands to run (same environment)     [twistd, python3]
#   READY_TIMEOUT   seconds to wait for all /healthz           [30]
# Needs curl for the /healthz checks.

set -euo pipefail

export WSLB_REDIS_URL="${WSLB_REDIS_URL:-redis://127.0.0.1:6379/0}"
INSTANCE_PORTS="${INSTANCE_PORTS:-8080:8081 8090:8091 8100:8101}"
WORKER_PORTS="${WORKER_PORTS:-9001 9002}"
LOG_DIR="${LOG_DIR:-./wslb-cluster-logs}"
TWISTD="${TWISTD:-twistd}"
PYTHON="${PYTHON:-python3}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
STOP_TIMEOUT=20  # > listen.drain_period (10 s) + wslb's 3 s close bound

check=false
case "${1:-}" in
    --check) check=true; shift ;;
    -h|--help) echo "usage: $0 [--check] [--set KEY=VALUE ...]"; exit 0 ;;
esac
# Any further arguments go to every instance (twistd wslb options).

mkdir -p "$LOG_DIR"
wslb_pids=()
worker_pids=()

# Stop a group of processes: SIGTERM, then SIGKILL whatever still runs after STOP_TIMEOUT.
stop_group() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT)) pid
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
    done
    kill -KILL "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
}

# wslb first (its users are closed with 1001 and reconnect elsewhere), then the workers.
stop_all() {
    trap - INT TERM EXIT
    echo "stopping..." >&2
    stop_group "${wslb_pids[@]}"
    stop_group "${worker_pids[@]}"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

workers=()
for port in $WORKER_PORTS; do
    "$PYTHON" -m wslb.worker.echo --host 127.0.0.1 --port "$port" \
        >"$LOG_DIR/echo-$port.log" 2>&1 &
    worker_pids+=($!)
    workers+=("\"ws://127.0.0.1:$port\"")
done
static_workers="[$(IFS=,; echo "${workers[*]}")]"

admins=()
n=0
for pair in $INSTANCE_PORTS; do
    n=$((n + 1))
    listen="${pair%%:*}" admin="${pair##*:}"
    # No pidfile: the instances share this directory; the registry URL comes from WSLB_REDIS_URL.
    "$TWISTD" -n --pidfile= -l "$LOG_DIR/wslb-$n.log" wslb \
        --set "listen.endpoint=tcp:$listen:interface=127.0.0.1" \
        --set "admin.endpoint=tcp:$admin:interface=127.0.0.1" \
        --set registry.backend=redis \
        --set pool.provider=static \
        --set "pool.static.workers=$static_workers" \
        "$@" \
        >>"$LOG_DIR/wslb-$n.log" 2>&1 &
    wslb_pids+=($!)
    admins+=("http://127.0.0.1:$admin")
done

# Exit (stopping everything) when a process we started has died.
check_alive() {
    local pid
    for pid in "${worker_pids[@]}" "${wslb_pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid has exited; stopping everything (see $LOG_DIR/)" >&2
            exit 1
        fi
    done
}

deadline=$((SECONDS + READY_TIMEOUT))
for admin in "${admins[@]}"; do
    until curl -fsS -o /dev/null -m 2 "$admin/healthz" 2>/dev/null; do
        check_alive
        if [ $SECONDS -ge $deadline ]; then
            echo "$admin/healthz not 200 within ${READY_TIMEOUT}s; see $LOG_DIR/" >&2
            exit 1
        fi
        sleep 0.2
    done
done
echo "ready: $n wslb instance(s) (${INSTANCE_PORTS}) on Redis ${WSLB_REDIS_URL##*@}, workers on ${WORKER_PORTS}; logs in $LOG_DIR"

if $check; then
    exit 0
fi
echo "Ctrl-C stops everything"
# Returns when a child exits, or at once when a signal runs its trap.
wait -n "${worker_pids[@]}" "${wslb_pids[@]}" || true
check_alive
