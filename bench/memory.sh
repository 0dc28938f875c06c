#!/usr/bin/env bash
# Memory of a gateway with one API, next to nginx as a reverse proxy:
#   - idle RSS after start, and after $REQUESTS requests (then idle);
#   - RSS per 1,000 idle keep-alive connections: $CONNS connections, one request answered on
#     each, then held open (bench/hold-connections.py); Δ RSS ÷ $CONNS × 1,000.
#
#   bench/memory.sh
#
# RSS is VmRSS from /proc (for nginx, its one process: `master_process off`). The gateway runs
# `outpost gateway --offline-config` with one API (key check + 2 set-header, as bench/proxy.sh
# case 3) and the default settings otherwise, except the ports and `log.level=warn`; WORKERS
# sets `listen.workers` (default: unset, the gateway's default of one per core).
# Settings (environment): REQUESTS=2000 CONNS=1000 WORKERS= BUILD=1 RUN_DIR=
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
REQUESTS=${REQUESTS:-2000}
CONNS=${CONNS:-1000}
WORKERS=${WORKERS:-}
BUILD=${BUILD:-1}
RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/outpost-memory.XXXXXX)}
SUB_KEY=bench0123456789abcdef0123456789abcdef

for tool in nginx wrk curl python3 awk; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
mkdir -p "$RUN_DIR"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


wait_http() {
    local url=$1 hdr=()
    [[ -n ${2:-} ]] && hdr=(-H "$2")
    for _ in $(seq 200); do
        curl -fsS -o /dev/null "${hdr[@]}" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "not answering: $url (logs in $RUN_DIR)" >&2
    return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }

if [[ $BUILD == 1 ]]; then
    log "cargo build --release --bin outpost"
    (cd "$ROOT" && cargo build --release --bin outpost >&2)
fi
OUTPOST=${OUTPOST:-$ROOT/target/release/outpost}

# ---------------------------------------------------------------- backend
free_port; PORT_BACKEND=$PORT
mkdir -p "$RUN_DIR/backend"
sed -e "s|@DIR@|$RUN_DIR/backend|g" -e "s|@PORT@|$PORT_BACKEND|g" \
    "$BENCH/nginx-backend.conf.in" >"$RUN_DIR/backend/nginx.conf"
nginx -p "$RUN_DIR/backend" -c "$RUN_DIR/backend/nginx.conf" -g 'daemon off;' \
    >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$PORT_BACKEND/item"

# ---------------------------------------------------------------- the proxies
cat >"$RUN_DIR/gateway.yaml" <<EOF
apiVersion: outpost/v1
backends:
  - {name: be, url: "http://127.0.0.1:$PORT_BACKEND"}
apis:
  - name: plain
    path: plain
    backend: be
    subscription-required: true
    operations: [{name: item, method: GET, url-template: /item}]
    policies:
      inbound:
        - set-header: {name: X-Bench-A, value: a}
        - set-header: {name: X-Bench-B, value: b}
products:
  - {name: bench, apis: [plain]}
subscriptions:
  - {name: bench, scope: {product: bench}, primary-key: "$SUB_KEY"}
gateways:
  - {name: bench, apis: [plain]}
EOF

start_gateway() {
    local http ops https
    free_port; http=$PORT
    free_port; ops=$PORT
    free_port; https=$PORT
    local env=(OUTPOST_LISTEN_HTTP="127.0.0.1:$http" OUTPOST_LISTEN_HTTPS="127.0.0.1:$https"
        OUTPOST_LISTEN_OPS="127.0.0.1:$ops" OUTPOST_REDIS_URL= OUTPOST_LOG_LEVEL=warn)
    [[ -n $WORKERS ]] && env+=(OUTPOST_LISTEN_WORKERS="$WORKERS")
    env "${env[@]}" "$OUTPOST" gateway --offline-config "$RUN_DIR/gateway.yaml" \
        >"$RUN_DIR/gateway.log" 2>&1 &
    PIDS+=("$!")
    SUT_PID=$!
    PORT_SUT=$http
    PATH_SUT=/plain/item
    HEADER="Ocp-Apim-Subscription-Key: $SUB_KEY"
}

start_nginx() {
    free_port
    mkdir -p "$RUN_DIR/nginx"
    sed -e "s|@DIR@|$RUN_DIR/nginx|g" -e "s|@PORT@|$PORT|g" -e "s|@WORKERS@|1|g" \
        -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" \
        "$BENCH/nginx-proxy.conf.in" >"$RUN_DIR/nginx/nginx.conf"
    nginx -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx/nginx.conf" \
        -g 'daemon off; master_process off;' >"$RUN_DIR/nginx.log" 2>&1 &
    PIDS+=("$!")
    SUT_PID=$!
    PORT_SUT=$PORT
    PATH_SUT=/item
    HEADER=""
}

measure() {
    local name=$1 started served held hold_pid
    "start_$name"
    local url="http://127.0.0.1:$PORT_SUT$PATH_SUT"
    if [[ -n $HEADER ]]; then wait_http "$url" "$HEADER"; else wait_http "$url"; fi
    sleep 1
    started=$(rss_kib "$SUT_PID")
    local hdr=()
    [[ -n $HEADER ]] && hdr=(-H "$HEADER")
    REQUESTS=$REQUESTS wrk -t1 -c8 -d600s "${hdr[@]}" -s "$BENCH/stop-after.lua" "$url" \
        >"$RUN_DIR/$name.wrk" 2>&1 || true
    grep -q '^STOP ok ' "$RUN_DIR/$name.wrk" || { cat "$RUN_DIR/$name.wrk" >&2; exit 1; }
    sleep 2
    served=$(rss_kib "$SUT_PID")
    rm -f "$RUN_DIR/ready"
    python3 "$BENCH/hold-connections.py" "$CONNS" "$PORT_SUT" "$PATH_SUT" "$RUN_DIR/ready" \
        "$HEADER" &
    hold_pid=$!
    PIDS+=("$hold_pid")
    for _ in $(seq 600); do [[ -e $RUN_DIR/ready ]] && break; sleep 0.1; done
    [[ -e $RUN_DIR/ready ]] || { echo "$name: connections not ready" >&2; exit 1; }
    sleep 2
    held=$(rss_kib "$SUT_PID")
    printf '%s\t%d\t%d\t%d\t%d\t%d\n' "$name" "$started" "$served" "$held" \
        "$(( (held - served) * 1000 / CONNS ))" "$(threads "$SUT_PID")" >>"$RUN_DIR/results.tsv"
    kill -TERM "$hold_pid" 2>/dev/null || true
    wait "$hold_pid" 2>/dev/null || true
    kill -TERM "$SUT_PID" 2>/dev/null || true
    wait "$SUT_PID" 2>/dev/null || true
}

: >"$RUN_DIR/results.tsv"
log "gateway"
measure gateway
log "nginx"
measure nginx
{
    echo "| proxy | RSS after start (KiB) | after $REQUESTS requests, idle (KiB) | with $CONNS idle keep-alive connections (KiB) | per 1,000 connections (KiB) | threads |"
    echo "|---|---|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %\047d | %\047d | %\047d | %\047d | %d |\n", $1, $2, $3, $4, $5, $6}' \
        "$RUN_DIR/results.tsv"
} | tee "$RUN_DIR/results.md"
echo "(raw: $RUN_DIR)"
