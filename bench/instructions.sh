#!/usr/bin/env bash
# Instructions per proxied request, for the gateway and for nginx as a reverse proxy: a number
# that does not depend on how busy the machine is (wall-clock benchmarks do, see bench/proxy.sh).
#
#   bench/instructions.sh            # build, measure both, print a table
#   bench/instructions.sh --check    # also fail if the gateway is above the recorded figure
#   PROFILE=1 bench/instructions.sh  # also print the gateway's inclusive profile of the window
#
# Each proxy runs under `valgrind --tool=callgrind` (instructions executed in user space, all
# threads) in front of the same nginx backend (bench/nginx-backend.conf.in, not measured). The
# gateway serves bench/gateway.yaml.in, API `plain` unless API= says otherwise: subscription key check + 2 set-header,
# one traffic worker, log level warn; nginx serves bench/nginx-proxy.conf.in with one process
# (`master_process off`). Per proxy:
#   1. a warm-up of $WARMUP requests (pools, lazy statics, first-use code);
#   2. counters zeroed (`callgrind_control -z`), $REQUESTS requests, a dump (`-d`): I1, R1;
#   3. counters zeroed, 2×$REQUESTS requests, a dump: I2, R2;
#   instructions per request = (I2 − I1) ÷ (R2 − R1).
# R is the number of requests the backend answered in the window (its stub_status), so it is
# exact whatever the client does at the end. The difference removes what every window costs
# once (the client's 8 connections, those it drops when it stops, one /metrics scrape). What it
# does not remove is work that grows with time (timers); the idle rate is measured too and
# printed beside. Each window ends with a /metrics scrape (see `settle`), so the exporter's
# deferred work on the window's histogram samples is counted in it, every time.
# Requests: `wrk -t1 -c$CONNS` (HTTP/1.1 keep-alive GET, like bench/proxy.sh), stopped after
# the given count by bench/stop-after.lua.
#
# --check compares the gateway's figure with bench/instructions.baseline (`gateway N`):
# it fails above N × (1 + MARGIN_PCT/100), MARGIN_PCT=15 by default. The figure depends on the
# toolchain and the dependency versions (Cargo.lock); re-record it when they change.
#
# Settings (environment): REQUESTS=2000 WARMUP=300 CONNS=8 IDLE_SECS=5 TARGETS="gateway nginx"
# API=plain (the gateway's API: `limited` adds a rate limit, `limited-leased` one with a local
# budget, `chosen` a choose with three conditions, `jwt` validate-jwt with keys from a JWKS URL
# served by `python3 -m http.server` and an RS256 token made with openssl) REDIS=0 (1: the gateway counts in a private redis-server, not measured)
# BUILD=1 OUTPOST= (a binary to measure instead of target/release/outpost) MARGIN_PCT=15 PROFILE=0
# SCHEME=http (https: both proxies terminate TLS with the same ECDSA P-256 certificate, as in
# bench/tls.sh; the keep-alive connections' handshakes fall in both windows alike and cancel)
# RUN_DIR= (default: a new /tmp/outpost-instructions.* dir,
# where the callgrind dumps stay).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-300}
CONNS=${CONNS:-8}
IDLE_SECS=${IDLE_SECS:-5}
TARGETS=${TARGETS:-"gateway nginx"}
BUILD=${BUILD:-1}
MARGIN_PCT=${MARGIN_PCT:-15}
PROFILE=${PROFILE:-0}
API=${API:-plain}
SCHEME=${SCHEME:-http}
[[ $SCHEME == http || $SCHEME == https ]] || { echo "SCHEME is http or https" >&2; exit 1; }
REDIS=${REDIS:-0}
CHECK=0
[[ ${1:-} == --check ]] && CHECK=1
RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/outpost-instructions.XXXXXX)}
SUB_KEY=bench0123456789abcdef0123456789abcdef
BASELINE=$BENCH/instructions.baseline

for tool in nginx wrk curl valgrind callgrind_control callgrind_annotate awk openssl xxd python3; do
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
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# wait_http URL [HEADER...]: until URL answers 2xx (120 s at most: valgrind starts slowly).
wait_http() {
    local url=$1 h hdr=()
    shift
    for h in "$@"; do [[ -n $h ]] && hdr+=(-H "$h"); done
    for _ in $(seq 1200); do
        curl -kfsS -o /dev/null "${hdr[@]}" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "not answering: $url (logs in $RUN_DIR)" >&2
    return 1
}

OUTPOST=${OUTPOST:-$ROOT/target/release/outpost}
if [[ " $TARGETS " == *" gateway "* ]]; then
    if [[ $BUILD == 1 ]]; then
        log "cargo build --release --bin outpost"
        (cd "$ROOT" && cargo build --release --bin outpost >&2)
    fi
    [[ -x $OUTPOST ]] || { echo "no $OUTPOST (BUILD=1 builds it)" >&2; exit 1; }
fi

# ---------------------------------------------------------------- backend (not measured)
free_port; PORT_BACKEND=$PORT
mkdir -p "$RUN_DIR/backend"
sed -e "s|@DIR@|$RUN_DIR/backend|g" -e "s|@PORT@|$PORT_BACKEND|g" \
    "$BENCH/nginx-backend.conf.in" >"$RUN_DIR/backend/nginx.conf"
nginx -p "$RUN_DIR/backend" -c "$RUN_DIR/backend/nginx.conf" -g 'daemon off;' \
    >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$PORT_BACKEND/item"

REDIS_URL=
if [[ $REDIS == 1 ]]; then
    free_port; PORT_REDIS=$PORT
    mkdir -p "$RUN_DIR/redis"
    redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$RUN_DIR/redis" >"$RUN_DIR/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do redis-cli -p "$PORT_REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done
    REDIS_URL="redis://127.0.0.1:$PORT_REDIS"
fi

# The identity provider of API `jwt` (not measured): a JWKS file over HTTP, and a token its key
# signs. Served whatever API is measured: the gateway's file names it.
jwt_fixture "$RUN_DIR"
free_port; PORT_JWKS=$PORT
python3 -m http.server "$PORT_JWKS" --bind 127.0.0.1 --directory "$RUN_DIR/jwks" \
    >"$RUN_DIR/jwks.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$PORT_JWKS/jwks.json"

if [[ $SCHEME == https ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" 2>/dev/null
fi

# Requests the backend has answered (stub_status "requests"; each status call counts one, the
# same in every window).
backend_requests() {
    curl -fsS "http://127.0.0.1:$PORT_BACKEND/nginx_status" | awk 'NR == 3 {print $3}'
}

# ---------------------------------------------------------------- the proxies, under callgrind
# valgrind counts every iteration of a `rep stos`/`rep movs` as one instruction, so glibc's
# memset/memcpy, which switch to them from 2 KiB (actix-http clears a 3 KiB header index on
# every parse attempt), would count 3,072 "instructions" for what the CPU does in about a
# hundred cycles. These tunables keep glibc on its vector loops (32 bytes per instruction), for
# both proxies.
export GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=100000000:glibc.cpu.x86_rep_movsb_threshold=100000000
CALLGRIND=(valgrind --tool=callgrind --dump-instr=no --collect-systime=no)

start_gateway() {
    local http ops https
    free_port; http=$PORT
    free_port; ops=$PORT
    free_port; https=$PORT
    sed -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" \
        -e "s|@JWKS@|http://127.0.0.1:$PORT_JWKS/jwks.json|g" \
        "$BENCH/gateway.yaml.in" >"$RUN_DIR/gateway.yaml"
    if [[ $SCHEME == https ]]; then
        # The certificate for `localhost`, the default for clients without SNI (wrk by address).
        local body
        body=$(sed '/^gateways:/,$d' "$RUN_DIR/gateway.yaml")
        {
            echo "$body"
            echo "named-values:"
            echo "  - name: tls-cert"
            echo "    value: |"
            sed 's/^/      /' "$RUN_DIR/cert.pem"
            echo "  - name: tls-key"
            echo "    secret: true"
            echo "    value: |"
            sed 's/^/      /' "$RUN_DIR/key.pem"
            echo "gateways:"
            echo "  - name: bench"
            echo "    apis: $(sed -n 's/^  - {name: bench, apis: \(\[.*\]\)}$/\1/p' "$RUN_DIR/gateway.yaml" | tail -1)"
            echo "    hostnames:"
            echo '      - {hostname: localhost, certificate-pem: "{{tls-cert}}", key-pem: "{{tls-key}}"}'
        } >"$RUN_DIR/gateway.yaml.tls"
        mv "$RUN_DIR/gateway.yaml.tls" "$RUN_DIR/gateway.yaml"
    fi
    env OUTPOST_LISTEN_HTTP="127.0.0.1:$http" OUTPOST_LISTEN_HTTPS="127.0.0.1:$https" \
        OUTPOST_LISTEN_OPS="127.0.0.1:$ops" OUTPOST_LISTEN_WORKERS=1 OUTPOST_REDIS_URL="$REDIS_URL" \
        OUTPOST_LISTEN_HTTPS_DEFAULT_HOSTNAME=localhost OUTPOST_LOG_LEVEL=warn \
        "${CALLGRIND[@]}" --callgrind-out-file="$RUN_DIR/gateway.callgrind" \
        "$OUTPOST" gateway --offline-config "$RUN_DIR/gateway.yaml" \
        >"$RUN_DIR/gateway.log" 2>&1 &
    PIDS+=("$!")
    SUT_PID=$!
    URL="http://127.0.0.1:$http/$API/item"
    [[ $SCHEME == https ]] && URL="https://127.0.0.1:$https/$API/item"
    HEADERS=("Ocp-Apim-Subscription-Key: $SUB_KEY")
    [[ $API == jwt ]] && HEADERS+=("Authorization: Bearer $BENCH_JWT")
    SCRAPE="http://127.0.0.1:$ops/metrics"
}

start_nginx() {
    local port
    free_port; port=$PORT
    mkdir -p "$RUN_DIR/nginx"
    sed -e "s|@DIR@|$RUN_DIR/nginx|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|1|g" \
        -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" \
        "$BENCH/nginx-proxy.conf.in" >"$RUN_DIR/nginx/nginx.conf"
    if [[ $SCHEME == https ]]; then
        # As bench/tls.sh's nginx: TLS 1.2 and 1.3, no session resumption.
        sed -i -e "s|listen 127.0.0.1:$port backlog=4096;|listen 127.0.0.1:$port ssl backlog=4096; ssl_certificate $RUN_DIR/cert.pem; ssl_certificate_key $RUN_DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;|" \
            "$RUN_DIR/nginx/nginx.conf"
        grep -q ssl_certificate "$RUN_DIR/nginx/nginx.conf" || { echo "nginx: no TLS" >&2; exit 1; }
    fi
    # One process, as the gateway's one worker: no master, so callgrind sees the worker's work.
    "${CALLGRIND[@]}" --callgrind-out-file="$RUN_DIR/nginx.callgrind" \
        nginx -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx/nginx.conf" \
        -g 'daemon off; master_process off;' >"$RUN_DIR/nginx.log" 2>&1 &
    PIDS+=("$!")
    SUT_PID=$!
    URL="$SCHEME://127.0.0.1:$port/item"
    HEADERS=()
    SCRAPE=""
}

# load COUNT: COUNT responses over $CONNS keep-alive connections.
load() {
    local h hdr=()
    for h in "${HEADERS[@]}"; do hdr+=(-H "$h"); done
    REQUESTS=$1 wrk -t1 -c"$CONNS" -d3600s --timeout 60s "${hdr[@]}" \
        -s "$BENCH/stop-after.lua" "$URL" >"$RUN_DIR/wrk.last" 2>&1 || true
    cat "$RUN_DIR/wrk.last" >>"$RUN_DIR/wrk.log"
    if ! grep -q '^STOP ok ' "$RUN_DIR/wrk.last"; then
        echo "error responses:" >&2
        cat "$RUN_DIR/wrk.last" >&2
        exit 1
    fi
}

# settle: the gateway's histogram samples are summarised by the Prometheus exporter later, in
# its upkeep (every 5 s) or when /metrics is scraped; a scrape now puts that work of a window's
# requests into the window, instead of into whichever window the next upkeep falls in.
settle() {
    [[ -n $SCRAPE ]] && curl -fsS -o /dev/null "$SCRAPE"
    return 0
}

dumps() { compgen -G "$RUN_DIR/$1.callgrind.*" | wc -l || true; }

# dumped NAME: DUMP_TOTAL = instructions since the last zeroing, from a fresh dump (its
# "totals:" line); LAST_DUMP = that dump.
dumped() {
    local before after file
    before=$(dumps "$1")
    callgrind_control -d "$SUT_PID" >/dev/null 2>&1
    for _ in $(seq 600); do
        after=$(dumps "$1")
        [[ $after -gt $before ]] && break
        sleep 0.1
    done
    file=$(ls -t "$RUN_DIR/$1.callgrind".* | head -1)
    # The dump is complete once its totals line is written.
    for _ in $(seq 100); do grep -q '^totals:' "$file" && break; sleep 0.1; done
    LAST_DUMP=$file
    DUMP_TOTAL=$(awk '/^totals:/ {print $2}' "$file")
}

measure() {
    local name=$1 i1 i2 r0 r1 r1b r2 idle
    log "$name: starting under callgrind"
    "start_$name"
    wait_http "$URL" "${HEADERS[@]}"
    log "$name: warm-up, $WARMUP requests"
    load "$WARMUP"
    settle
    sleep 1
    callgrind_control -z "$SUT_PID" >/dev/null 2>&1
    sleep "$IDLE_SECS"
    dumped "$name"
    idle=$DUMP_TOTAL
    log "$name: $REQUESTS requests"
    callgrind_control -z "$SUT_PID" >/dev/null 2>&1
    r0=$(backend_requests)
    load "$REQUESTS"
    settle
    r1=$(backend_requests)
    dumped "$name"
    i1=$DUMP_TOTAL
    local one=$LAST_DUMP
    log "$name: $((2 * REQUESTS)) requests"
    callgrind_control -z "$SUT_PID" >/dev/null 2>&1
    r1b=$(backend_requests)
    load $((2 * REQUESTS))
    settle
    r2=$(backend_requests)
    dumped "$name"
    i2=$DUMP_TOTAL
    local per
    per=$(( (i2 - i1) / ((r2 - r1b) - (r1 - r0)) ))
    printf '%s\t%d\t%d\t%d\t%d\t%d\t%d\n' "$name" "$per" "$i1" "$((r1 - r0))" "$i2" \
        "$((r2 - r1b))" "$((idle / IDLE_SECS))" >>"$RUN_DIR/results.tsv"
    if [[ $PROFILE == 1 ]]; then
        callgrind_annotate --inclusive=yes --threshold=99 "$one" >"$RUN_DIR/$name.inclusive.txt"
        callgrind_annotate --threshold=99 "$one" >"$RUN_DIR/$name.self.txt"
    fi
    kill -TERM "$SUT_PID" 2>/dev/null || true
    wait "$SUT_PID" 2>/dev/null || true
}

: >"$RUN_DIR/results.tsv"
for t in $TARGETS; do measure "$t"; done

{
    echo "| proxy | instructions / request | window 1: instructions / requests | window 2: instructions / requests | idle instructions / s |"
    echo "|---|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %\047d | %\047d / %d | %\047d / %d | %\047d |\n", $1, $2, $3, $4, $5, $6, $7}' \
        "$RUN_DIR/results.tsv"
    gw=$(awk -F'\t' '$1 == "gateway" {print $2}' "$RUN_DIR/results.tsv")
    ng=$(awk -F'\t' '$1 == "nginx" {print $2}' "$RUN_DIR/results.tsv")
    if [[ -n $gw && -n $ng ]]; then
        echo
        awk -v g="$gw" -v n="$ng" 'BEGIN {printf "gateway ÷ nginx: %.2f\n", g / n}'
    fi
} | tee "$RUN_DIR/results.md"
echo "(raw: $RUN_DIR)"

if [[ $CHECK == 1 ]]; then
    recorded=$(awk '$1 == "gateway" {print $2}' "$BASELINE")
    gw=$(awk -F'\t' '$1 == "gateway" {print $2}' "$RUN_DIR/results.tsv")
    [[ -n $gw ]] || { echo "--check needs the gateway target" >&2; exit 1; }
    limit=$((recorded * (100 + MARGIN_PCT) / 100))
    if ((gw > limit)); then
        echo "REGRESSION: gateway $gw instructions/request > $limit (recorded $recorded + $MARGIN_PCT %)" >&2
        exit 1
    fi
    echo "ok: gateway $gw instructions/request ≤ $limit (recorded $recorded + $MARGIN_PCT %)"
fi
