#!/usr/bin/env bash
# Gateway proxy benchmark: the gateway side by side with nginx, in one run, as ratios.
#
#   bench/proxy.sh                  # build, run, print the markdown tables
#   ROUNDS=5 PIN=1 bench/proxy.sh   # more rounds; pinned (quiet machine)
#
# Targets (all on 127.0.0.1, free ports):
#   1   direct to the backend (nginx `return 200` with a small JSON body, 1 worker)
#   2   nginx as a plain reverse proxy (keep-alive upstream), 1 worker      [2b: 2 workers]
#   3   gateway, offline mode, 1 worker: subscription key + 2 set-header   [3b: 2 workers]
#   3r  as 3, in the gateway that has redis.url set (control for 5)
#   3l  as 3, in a gateway writing the access log (every request, to a file)
#   3s  as 3, in a gateway writing the access log for 1 % of requests (sample = 0.01)
#   3t  as 3, in a gateway tracing every request (OpenTelemetry, OTLP/HTTP to bench/otlp-sink.py)
#   3u  as 3, in a gateway tracing 1 % of requests (head sampling ratio 0.01)
#   3c  as 3 + a `choose` with three `when` conditions (CEL), the last one matching
#   3j  as 3 + validate-jwt with a JWKS URL (RS256 token from openssl; the JWKS served by
#       `python3 -m http.server`, fetched once in the background, then from the cache)
#   4   as 3 + rate-limit, in-process store
#   5   as 3 + rate-limit, Redis store (private redis-server)
#   5b  as 5 with `local-budget: 100` (checks admitted from a lease, see docs/rate-limiting.md)
#   5q  as 5 + quota, Redis store (two shared counters per request)
#   6   as 3 + cache-lookup/cache-store, every request a hit (in-process tier)
#
# Phase 1, max throughput: per round and target a warm-up, then `wrk -t1 -c$CONNS -d$DURATION`.
# Phase 2, latency at a fixed rate: $LOAD_PCT % of the slowest target's max (median over rounds),
# the same rate for every target, `wrk -t1 -c$LAT_CONNS` paced by bench/paced.lua (microsecond
# percentiles); LATENCY_TOOL=hey uses `hey -z -c -q` instead (its output has 100 µs resolution).
# Targets are interleaved, and each round starts one target later than the previous one.
#
# Pinning is off by default (PIN=0): on a shared 2-core machine where other builds run, pinning
# the proxy to one CPU chains it to whatever else runs there (gateway max spread 173 % pinned vs
# 5 % unpinned in a test while compiles ran). PIN=1 puts the proxy under test alone on CPU
# $SUT_CPUS, and wrk, the backend and Redis on CPU $CLIENT_CPUS; the 2-worker targets (2b, 3b)
# on $BOTH_CPUS. Use it on a quiet machine.
#
# Also measured: CPU time of the process under test per request (/proc utime+stime, the
# steadiest number when the load generator shares the machine), new backend connections
# (nginx stub_status accepts), Redis round trips per request (INFO commandstats) and Redis CPU.
#
# Settings (environment): ROUNDS=3 DURATION=10 WARMUP=3 CONNS=32 LAT_CONNS=8 LOAD_PCT=50 LATENCY=1
# (LATENCY=0 skips phase 2: e.g. `TARGETS="3r 5 5b" CONNS=8 LATENCY=0` for the rate-limit cost)
# RATE= (fixed latency rate, skips the max-based choice) PIN=0 SUT_CPUS=1 CLIENT_CPUS=0
# BOTH_CPUS=0,1 BUILD=1 OUTPOST= (a binary to run instead of target/release/outpost) LATENCY_TOOL=wrk|hey TARGETS="1 2 2b 3 3b 3r 3c 3j 4 5 5b 5q 6" RUN_DIR=
# Raw logs and results.md stay in RUN_DIR (default: a new /tmp/outpost-proxy-bench.* dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-32}
LAT_CONNS=${LAT_CONNS:-8}
LOAD_PCT=${LOAD_PCT:-50}
RATE=${RATE:-}
PIN=${PIN:-0}
SUT_CPUS=${SUT_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
BOTH_CPUS=${BOTH_CPUS:-0,1}
BUILD=${BUILD:-1}
LATENCY_TOOL=${LATENCY_TOOL:-wrk}
TARGETS=${TARGETS:-"1 2 2b 3 3b 3r 3c 3j 4 5 5b 5q 6"}
LATENCY=${LATENCY:-1}
RUN_DIR=${REPORT_ONLY:-${RUN_DIR:-$(mktemp -d /tmp/outpost-proxy-bench.XXXXXX)}}
SUB_KEY=bench0123456789abcdef0123456789abcdef
CLK_TCK=$(getconf CLK_TCK)

for tool in nginx wrk redis-server redis-cli curl taskset awk openssl xxd python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[[ $LATENCY_TOOL == wrk || $LATENCY_TOOL == hey ]] || { echo "LATENCY_TOOL: wrk or hey" >&2; exit 1; }
[[ $LATENCY_TOOL == wrk ]] || command -v hey >/dev/null || { echo "missing tool: hey" >&2; exit 1; }
mkdir -p "$RUN_DIR"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pinned CPUS CMD... : runs CMD on CPUS when PIN=1.
pinned() {
    local cpus=$1
    shift
    if [[ $PIN == 1 ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# start NAME CPUS CMD... : background process, output in $RUN_DIR/NAME.log, PID in PID_NAME.
# (A simple command, not a function: $! is then the program itself; taskset and env exec.)
start() {
    local name=$1 cpus=$2
    shift 2
    local cmd=("$@")
    [[ $PIN == 1 ]] && cmd=(taskset -c "$cpus" "$@")
    "${cmd[@]}" >"$RUN_DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    printf -v "PID_$name" '%s' "$!"
}


# wait_http URL [HEADER...] : until URL answers 2xx (10 s at most).
wait_http() {
    local url=$1 i h hdr=()
    shift
    for h in "$@"; do [[ -n $h ]] && hdr+=(-H "$h"); done
    for i in $(seq 100); do
        if curl -fsS -o /dev/null "${hdr[@]}" "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "not answering: $url (logs in $RUN_DIR)" >&2
    return 1
}


# pids_of NAME : the process and its children (nginx master + workers).
pids_of() {
    local pid_var="PID_$1"
    local pid=${!pid_var}
    echo "$pid" $(pgrep -P "$pid" || true)
}

backend_accepts() {
    curl -fsS "http://127.0.0.1:$PORT_BACKEND/nginx_status" | awk 'NR == 3 {print $1}'
}

# Redis round trips: every top-level command. Commands the Lua scripts run inside Redis
# (actors/src/shared_state/scripts) are counted by commandstats too but cost no round trip;
# INFO is this script's own.
REDIS_IN_SCRIPT="hdel hget hgetall hincrby hmget hset pexpire expireat time info"
redis_calls() {
    redis-cli -p "$PORT_REDIS" info commandstats | tr -d '\r' | awk -v skip=" $REDIS_IN_SCRIPT " '
        /^cmdstat_/ {
            split($0, a, ":"); name = substr(a[1], 9); calls = a[2]
            sub(/^calls=/, "", calls); sub(/,.*/, "", calls)
            if (index(skip, " " name " ") == 0) total += calls
            detail = detail name "=" calls " "
        }
        END { printf "%d\t%s\n", total, detail }'
}

# ---------------------------------------------------------------- report
# report: renders $RUN_DIR/results.md from results.tsv, labels.txt, order.txt, machine.txt,
# meta.env and checks.txt. `REPORT_ONLY=DIR bench/proxy.sh` re-renders an earlier run.
report() {
    # shellcheck disable=SC1091
    source "$RUN_DIR/meta.env"
    {
        echo "### Run $(awk '/^date:/ {print $2}' "$RUN_DIR/machine.txt")"
        echo
        echo '```'
        sed '/^busiest/,$d' "$RUN_DIR/machine.txt"
        echo "load after phase 1: $LOAD_MID"
        echo "load at end: $LOAD_END"
        echo "rounds: $ROUNDS; max: wrk -t1 -c$CONNS -d${DURATION}s after a ${WARMUP}s warm-up; latency: $RATE req/s, $LATENCY_TOOL, $LAT_CONNS connections, ${DURATION}s"
        echo '```'
        echo
        awk -F'\t' -v rounds="$ROUNDS" -v rate="$RATE" -v nconns="$CONNS" '
            BEGIN { control["3b"] = "2b"; control["5"] = "3r"; control["5q"] = "3r"; control["5b"] = "3r"; control["6"] = "1" }
            FILENAME ~ /labels.txt$/ { split($0, p, "|"); label[p[1]] = p[2]; next }
            FILENAME ~ /order.txt$/ { order[++nids] = $1; next }
            $1 == "max" {
                rps[$3, $2] = $4; st[$3] += $6; so[$3] += $7; cpu[$3, $2] = $8; util[$3, $2] = $9
                conns[$3] += $10; rt[$3, $2] = $11; rcpu[$3, $2] = $12; next
            }
            $1 == "lat" {
                got[$3, $2] = $4; lst[$3] += $6; lso[$3] += $7; p50[$3, $2] = $8; p99[$3, $2] = $9
                p999[$3, $2] = $10; next
            }
            function med(arr, id,    a, n, i, j, x) {
                n = 0
                for (i = 1; i <= rounds; i++) if ((id, i) in arr && arr[id, i] != "-") a[++n] = arr[id, i] + 0
                if (n == 0) return ""
                for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            # spread of a metric over rounds, (max - min) / median, in %
            function spread(arr, id,    i, lo, hi, m, first) {
                first = 1
                for (i = 1; i <= rounds; i++) if ((id, i) in arr) {
                    if (first || arr[id, i] + 0 < lo) lo = arr[id, i] + 0
                    if (first || arr[id, i] + 0 > hi) hi = arr[id, i] + 0
                    first = 0
                }
                m = med(arr, id)
                return (m > 0) ? sprintf("%.0f %%", (hi - lo) * 100 / m) : ""
            }
            # ratio of arr[id] to arr[base], per round, as "median (min-max)"
            function ratio(arr, id, base, invert,    r, i, n, lo, hi, m, txt) {
                if (!((base, 1) in arr) || !((id, 1) in arr)) return "–"
                n = 0
                for (i = 1; i <= rounds; i++) if ((id, i) in arr && (base, i) in arr && arr[base, i] > 0 && arr[id, i] > 0) {
                    r["", i] = invert ? arr[base, i] / arr[id, i] : arr[id, i] / arr[base, i]
                    if (n == 0 || r["", i] < lo) lo = r["", i]
                    if (n == 0 || r["", i] > hi) hi = r["", i]
                    n++
                }
                if (n == 0) return "–"
                m = med(r, "")
                txt = sprintf("%.2f", m)
                if (n > 1 && sprintf("%.2f", lo) != sprintf("%.2f", hi)) txt = txt sprintf(" (%.2f–%.2f)", lo, hi)
                return txt
            }
            # ratio to the control target of id (see BEGIN), named
        function ctl(arr, id,    r) {
            if (!(id in control)) return "–"
            r = ratio(arr, id, control[id], 0)
            return (r == "–") ? r : r " vs " control[id]
        }
        # integer with thousands separators
            function fmt(x,    s, neg) {
                if (x == "") return "–"
                s = sprintf("%.0f", x); neg = ""
                if (s ~ /^-/) { neg = "-"; s = substr(s, 2) }
                while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
                return neg s
            }
            END {
                print "Max throughput (`wrk -t1 -c" nconns "`), median of the rounds; ratios are per round, median (min–max). Control: 3b vs 2b, 5 vs 3r, 6 vs 1."
                print ""
                print "| # | target | req/s | spread | vs nginx (2) | vs gateway (3) | vs control | proxy CPU µs/req | CPU vs nginx | proxy CPU busy | Redis round trips/req (Redis CPU µs/req) | new backend conns | errors (≥400 / socket) |"
                print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                for (k = 1; k <= nids; k++) {
                    id = order[k]
                    printf "| %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %.0f %% | %s | %d | %d / %d |\n", id, label[id],
                        fmt(med(rps, id)), spread(rps, id), ratio(rps, id, "2", 0),
                        (id ~ /^[3456]/) ? ratio(rps, id, "3", 0) : "–",
                        ctl(rps, id),
                        med(cpu, id), ratio(cpu, id, "2", 0), med(util, id),
                        (id == "5" || id == "5b" || id == "5q" || id == "3r") ? sprintf("%.2f (%.1f)", med(rt, id), med(rcpu, id)) : "–",
                        conns[id], st[id], so[id]
                }
                print ""
                printf "Latency at a fixed %s req/s (µs; ratios per round, median (min–max); \"added\" = minus direct):\n", rate
                print ""
                print "| # | target | achieved req/s | p50 | p99 | p99.9 | p50 vs nginx | p99 vs nginx | p50 vs gateway (3) | p99 vs gateway (3) | added p50 / p99 vs direct | errors (≥400 / socket) |"
                print "|---|---|---|---|---|---|---|---|---|---|---|---|"
                for (k = 1; k <= nids; k++) {
                    id = order[k]
                    added = ((("1", 1) in p99)) ? sprintf("%s / %s", fmt(med(p50, id) - med(p50, "1")), fmt(med(p99, id) - med(p99, "1"))) : "–"
                    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d / %d |\n", id, label[id],
                        fmt(med(got, id)), fmt(med(p50, id)), fmt(med(p99, id)), fmt(med(p999, id)),
                        ratio(p50, id, "2", 0), ratio(p99, id, "2", 0),
                        (id ~ /^[3456]/) ? ratio(p50, id, "3", 0) : "–",
                        (id ~ /^[3456]/) ? ratio(p99, id, "3", 0) : "–", added, lst[id], lso[id]
                }
            }' "$RUN_DIR/labels.txt" "$RUN_DIR/order.txt" "$RUN_DIR/results.tsv"
        echo
        echo '```'
        cat "$RUN_DIR/checks.txt"
        echo '```'
    } >"$RUN_DIR/results.md"
}

if [[ -n ${REPORT_ONLY:-} ]]; then
    report
    cat "$RUN_DIR/results.md"
    exit 0
fi

# ---------------------------------------------------------------- build and start
if [[ $BUILD == 1 ]]; then
    log "cargo build --release --bin outpost"
    (cd "$ROOT" && cargo build --release --bin outpost)
fi
OUTPOST=${OUTPOST:-${CARGO_TARGET_DIR:-$ROOT/target}/release/outpost}
[[ -x $OUTPOST ]] || { echo "no binary at $OUTPOST (BUILD=1 builds it)" >&2; exit 1; }

free_port; PORT_BACKEND=$PORT
free_port; PORT_NGINX=$PORT
free_port; PORT_NGINX2=$PORT
free_port; PORT_REDIS=$PORT

nginx_instance() { # NAME PORT WORKERS CPUS TEMPLATE
    local name=$1 port=$2 workers=$3 cpus=$4 template=$5 dir=$RUN_DIR/$1
    mkdir -p "$dir"
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" \
        -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" "$template" >"$dir/nginx.conf"
    start "$name" "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" -e stderr -g 'daemon off;'
}
nginx_instance backend "$PORT_BACKEND" 1 "$CLIENT_CPUS" "$BENCH/nginx-backend.conf.in"
nginx_instance nginx "$PORT_NGINX" 1 "$SUT_CPUS" "$BENCH/nginx-proxy.conf.in"
nginx_instance nginx2 "$PORT_NGINX2" 2 "$BOTH_CPUS" "$BENCH/nginx-proxy.conf.in"

mkdir -p "$RUN_DIR/redis"
start redis "$CLIENT_CPUS" redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$RUN_DIR/redis"

# The identity provider of 3j: a JWKS file over HTTP, and a token its key signs.
jwt_fixture "$RUN_DIR"
free_port; PORT_JWKS=$PORT
start jwks "$CLIENT_CPUS" python3 -m http.server "$PORT_JWKS" --bind 127.0.0.1 \
    --directory "$RUN_DIR/jwks"
wait_http "http://127.0.0.1:$PORT_JWKS/jwks.json"

sed -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" \
    -e "s|@JWKS@|http://127.0.0.1:$PORT_JWKS/jwks.json|g" \
    "$BENCH/gateway.yaml.in" >"$RUN_DIR/gateway.yaml"
"$OUTPOST" validate -f "$RUN_DIR/gateway.yaml" >&2

gateway() { # NAME WORKERS CPUS REDIS_URL [ACCESS_LOG_SAMPLE] [TRACE_RATIO]
    local name=$1 workers=$2 cpus=$3 redis=$4 sample=${5:-} ratio=${6:-} http ops
    free_port; http=$PORT
    free_port; ops=$PORT
    free_port
    printf -v "PORT_$name" '%s' "$http"
    printf -v "OPS_$name" '%s' "$ops"
    local env_extra=(OUTPOST_ACCESS_LOG_ENABLED=false)
    [[ -n $sample ]] && env_extra=(OUTPOST_ACCESS_LOG_ENABLED=true
        OUTPOST_ACCESS_LOG_SAMPLE="$sample" OUTPOST_ACCESS_LOG_PATH="$RUN_DIR/$name-access.log")
    # Tracing exports to the sink (a separate process, not measured); OTLP metrics stay off so
    # that only the traces' cost is in the figure.
    [[ -n $ratio ]] && env_extra+=(OUTPOST_OTEL_ENDPOINT="http://127.0.0.1:$PORT_SINK"
        OUTPOST_OTEL_METRICS=false OUTPOST_OTEL_SAMPLING_RATIO="$ratio")
    start "$name" "$cpus" env "${env_extra[@]}" OUTPOST_LISTEN_HTTP="127.0.0.1:$http" \
        OUTPOST_LISTEN_HTTPS="127.0.0.1:$PORT" OUTPOST_LISTEN_OPS="127.0.0.1:$ops" \
        OUTPOST_LISTEN_WORKERS="$workers" OUTPOST_REDIS_URL="$redis" OUTPOST_LOG_LEVEL=warn \
        "$OUTPOST" gateway --offline-config "$RUN_DIR/gateway.yaml"
}
gateway gw 1 "$SUT_CPUS" ""
gateway gw2 2 "$BOTH_CPUS" ""
gateway gwr 1 "$SUT_CPUS" "redis://127.0.0.1:$PORT_REDIS"
[[ " $TARGETS " == *" 3l "* ]] && gateway gwl 1 "$SUT_CPUS" "" 1.0
[[ " $TARGETS " == *" 3s "* ]] && gateway gws 1 "$SUT_CPUS" "" 0.01
if [[ " $TARGETS " == *" 3t "* || " $TARGETS " == *" 3u "* ]]; then
    free_port; PORT_SINK=$PORT
    start sink "$CLIENT_CPUS" python3 "$BENCH/otlp-sink.py" "$PORT_SINK"
    [[ " $TARGETS " == *" 3t "* ]] && gateway gwt 1 "$SUT_CPUS" "" "" 1.0
    [[ " $TARGETS " == *" 3u "* ]] && gateway gwu 1 "$SUT_CPUS" "" "" 0.01
fi

KEY_HEADER="Ocp-Apim-Subscription-Key: $SUB_KEY"
JWT_HEADER="Authorization: Bearer $BENCH_JWT"
# id | process under test | URL | headers (0: none, 1: the key, 2: the key and the JWT) | label
TARGET_TABLE="1|backend|http://127.0.0.1:$PORT_BACKEND/item|0|direct to backend (nginx return 200)
2|nginx|http://127.0.0.1:$PORT_NGINX/item|0|nginx reverse proxy, 1 worker
2b|nginx2|http://127.0.0.1:$PORT_NGINX2/item|0|nginx reverse proxy, 2 workers
3|gw|http://127.0.0.1:$PORT_gw/plain/item|1|gateway: key + 2 set-header, 1 worker
3b|gw2|http://127.0.0.1:$PORT_gw2/plain/item|1|gateway: key + 2 set-header, 2 workers
3r|gwr|http://127.0.0.1:$PORT_gwr/plain/item|1|gateway with redis.url: key + 2 set-header (control for 5)
3l|gwl|http://127.0.0.1:${PORT_gwl:-0}/plain/item|1|as 3 + access log, every request (file)
3s|gws|http://127.0.0.1:${PORT_gws:-0}/plain/item|1|as 3 + access log, 1 % sampled (file)
3t|gwt|http://127.0.0.1:${PORT_gwt:-0}/plain/item|1|as 3 + OpenTelemetry tracing, every request
3u|gwu|http://127.0.0.1:${PORT_gwu:-0}/plain/item|1|as 3 + OpenTelemetry tracing, 1 % sampled
3c|gw|http://127.0.0.1:$PORT_gw/chosen/item|1|as 3 + choose, 3 conditions, the last matching
3j|gw|http://127.0.0.1:$PORT_gw/jwt/item|2|as 3 + validate-jwt (RS256, keys from a JWKS URL)
4|gw|http://127.0.0.1:$PORT_gw/limited/item|1|gateway + rate-limit, in-process store
5|gwr|http://127.0.0.1:$PORT_gwr/limited/item|1|gateway + rate-limit, Redis store
5b|gwr|http://127.0.0.1:$PORT_gwr/limited-leased/item|1|gateway + rate-limit, Redis store, local budget
5q|gwr|http://127.0.0.1:$PORT_gwr/limited-quota/item|1|gateway + rate-limit + quota, Redis store
6|gw|http://127.0.0.1:$PORT_gw/cached/item|1|gateway + cache hit (in-process tier)"

declare -A T_SUT T_URL T_KEY T_LABEL
IDS=()
while IFS='|' read -r id sut url key label; do
    [[ " $TARGETS " == *" $id "* ]] || continue
    IDS+=("$id")
    T_SUT[$id]=$sut
    T_URL[$id]=$url
    T_KEY[$id]=$key
    T_LABEL[$id]=$label
done <<<"$TARGET_TABLE"
[[ ${#IDS[@]} -gt 0 ]] || { echo "TARGETS selects nothing" >&2; exit 1; }

# target_headers ID : HDR, wrk's / hey's -H arguments for the target.
target_headers() {
    HDR=()
    [[ ${T_KEY[$1]} -ge 1 ]] && HDR+=(-H "$KEY_HEADER")
    [[ ${T_KEY[$1]} -ge 2 ]] && HDR+=(-H "$JWT_HEADER")
    return 0
}

for id in "${IDS[@]}"; do
    hdrs=()
    [[ ${T_KEY[$id]} -ge 1 ]] && hdrs+=("$KEY_HEADER")
    [[ ${T_KEY[$id]} -ge 2 ]] && hdrs+=("$JWT_HEADER")
    wait_http "${T_URL[$id]}" "${hdrs[@]}"
done
wait_http "http://127.0.0.1:$PORT_BACKEND/nginx_status"
redis-cli -p "$PORT_REDIS" ping >/dev/null
redis-cli -p "$PORT_REDIS" config resetstat >/dev/null

# ---------------------------------------------------------------- machine facts
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -n $(git status --porcelain 2>/dev/null) ]] && echo ' (uncommitted changes)')"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), redis $(redis-server -v | sed 's/.*v=\([^ ]*\).*/\1/')"
    echo "pinning: $([[ $PIN == 1 ]] && echo "proxy under test on CPU $SUT_CPUS; wrk, backend and Redis on CPU $CLIENT_CPUS; 2-worker targets on CPUs $BOTH_CPUS" || echo none)"
    echo "load at start: $(uptime | sed 's/.*load average/load average/')"
    echo "busiest other processes at start:"
    ps -eo pcpu=,comm= --sort=-pcpu | head -4 | sed 's/^/    /'
} | tee "$RUN_DIR/machine.txt" >&2

# ---------------------------------------------------------------- phase 1: max throughput
RESULTS=$RUN_DIR/results.tsv
: >"$RESULTS"

# rotated ROUND : the targets, starting ROUND places further along.
rotated() {
    local n=${#IDS[@]} i
    for i in $(seq 0 $((n - 1))); do echo "${IDS[$(((i + $1) % n))]}"; done
}

run_max() { # ROUND ID
    local round=$1 id=$2 url=${T_URL[$2]} sut=${T_SUT[$2]} out=$RUN_DIR/max-$1-$2.txt
    local hdr
    target_headers "$id"
    hdr=("${HDR[@]}")
    pinned "$CLIENT_CPUS" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null
    local pids c0 r0 a0 rc0 c1 r1 a1 rc1
    pids=$(pids_of "$sut")
    c0=$(cpu_ticks $pids)
    r0=$(cpu_ticks "$PID_redis")
    a0=$(backend_accepts)
    rc0=$(redis_calls)
    pinned "$CLIENT_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$BENCH/count.lua" "${hdr[@]}" "$url" >"$out"
    c1=$(cpu_ticks $pids)
    r1=$(cpu_ticks "$PID_redis")
    a1=$(backend_accepts)
    rc1=$(redis_calls)
    echo "redis before: ${rc0#*$'\t'}" >>"$out"
    echo "redis after:  ${rc1#*$'\t'}" >>"$out"
    local line
    line=$(grep '^MAX ' "$out") || { echo "wrk gave no result for $id, see $out" >&2; cat "$out" >&2; return 1; }
    # shellcheck disable=SC2086
    awk -v round="$round" -v id="$id" -v line="$line" -v c="$((c1 - c0))" -v r="$((r1 - r0))" \
        -v a="$((a1 - a0 - 1))" -v rc="$((${rc1%%$'\t'*} - ${rc0%%$'\t'*}))" -v tck="$CLK_TCK" '
        BEGIN {
            n = split(line, kv, /[ =]/)
            for (i = 2; i < n; i += 2) v[kv[i]] = kv[i + 1]
            req = v["requests"]; secs = v["duration_us"] / 1e6
            sock = v["connect"] + v["read"] + v["write"] + v["timeout"]
            printf "max\t%s\t%s\t%.0f\t%d\t%d\t%d\t%.1f\t%.0f\t%d\t%.3f\t%.1f\n", round, id,
                req / secs, req, v["status"], sock, c * 1e6 / tck / req, c * 100 / tck / secs,
                a, rc / req, r * 1e6 / tck / req
        }' >>"$RESULTS"
    log "max   round $round  $(printf '%-3s' "$id") $(tail -1 "$RESULTS" | cut -f4) req/s  (status>=400: $(tail -1 "$RESULTS" | cut -f6), socket errors: $(tail -1 "$RESULTS" | cut -f7))"
}

run_lat() { # ROUND ID RATE
    local round=$1 id=$2 rate=$3 url=${T_URL[$2]} out=$RUN_DIR/lat-$1-$2.txt
    local hdr
    target_headers "$id"
    hdr=("${HDR[@]}")
    if [[ $LATENCY_TOOL == wrk ]]; then
        BENCH_RATE=$rate pinned "$CLIENT_CPUS" wrk -t1 -c"$LAT_CONNS" -d2s -s "$BENCH/paced.lua" "${hdr[@]}" "$url" >/dev/null
        BENCH_RATE=$rate pinned "$CLIENT_CPUS" wrk -t1 -c"$LAT_CONNS" -d"${DURATION}s" -s "$BENCH/paced.lua" "${hdr[@]}" "$url" >"$out"
        local line
        line=$(grep '^PACED ' "$out") || { echo "wrk gave no result for $id, see $out" >&2; return 1; }
        awk -v round="$round" -v id="$id" -v line="$line" '
            BEGIN {
                n = split(line, kv, /[ =]/)
                for (i = 2; i < n; i += 2) v[kv[i]] = kv[i + 1]
                printf "lat\t%s\t%s\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", round, id,
                    v["requests"] / (v["duration_us"] / 1e6), v["requests"], v["status"], v["sockerr"],
                    v["p50_us"], v["p99_us"], v["p999_us"], v["max_us"]
            }' >>"$RESULTS"
    else
        local q=$(((rate + LAT_CONNS - 1) / LAT_CONNS))
        pinned "$CLIENT_CPUS" hey -z 2s -c "$LAT_CONNS" -q "$q" "${hdr[@]}" "$url" >/dev/null
        pinned "$CLIENT_CPUS" hey -z "${DURATION}s" -c "$LAT_CONNS" -q "$q" "${hdr[@]}" "$url" >"$out"
        awk -v round="$round" -v id="$id" '
            /Requests\/sec:/ { rps = $2 }
            /^  50% in/ { p50 = $3 * 1e6 }
            /^  99% in/ { p99 = $3 * 1e6 }
            /^  \[[0-9]+\]/ { code = substr($1, 2, 3); if (code + 0 < 400) ok += $2; else bad += $2 }
            /^Error distribution/ { inerr = 1; next }
            inerr && /^  \[[0-9]+\]/ { errs += substr($1, 2, length($1) - 2) }
            END {
                printf "lat\t%s\t%s\t%.0f\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", round, id, rps, ok + bad,
                    bad, errs, p50, p99, "-", "-"
            }' "$out" >>"$RESULTS"
    fi
    log "lat   round $round  $(printf '%-3s' "$id") $(tail -1 "$RESULTS" | cut -f4) req/s  p50 $(tail -1 "$RESULTS" | cut -f8) us  p99 $(tail -1 "$RESULTS" | cut -f9) us  (status>=400: $(tail -1 "$RESULTS" | cut -f6), socket errors: $(tail -1 "$RESULTS" | cut -f7))"
}

log "phase 1: max throughput, wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS round(s), warm-up ${WARMUP}s"
for round in $(seq 1 "$ROUNDS"); do
    for id in $(rotated $((round - 1))); do run_max "$round" "$id"; done
done
LOAD_MID=$(uptime | sed 's/.*load average: //')

if [[ -z $RATE ]]; then
    # LOAD_PCT % of the slowest target's median max, rounded down to 100 req/s.
    RATE=$(awk -F'\t' -v pct="$LOAD_PCT" '
        $1 == "max" { n[$3]++; v[$3, n[$3]] = $4 }
        END {
            min = -1
            for (id in n) {
                for (i = 1; i <= n[id]; i++) a[i] = v[id, i]
                for (i = 2; i <= n[id]; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                m = (n[id] % 2) ? a[(n[id] + 1) / 2] : (a[n[id] / 2] + a[n[id] / 2 + 1]) / 2
                if (min < 0 || m < min) min = m
            }
            r = int(min * pct / 100 / 100) * 100
            print (r < 100 ? 100 : r)
        }' "$RESULTS")
fi
if [[ $LATENCY == 1 ]]; then
    log "phase 2: latency at $RATE req/s ($LATENCY_TOOL, $LAT_CONNS connections, ${DURATION}s)"
    for round in $(seq 1 "$ROUNDS"); do
        for id in $(rotated $((round - 1))); do run_lat "$round" "$id" "$RATE"; done
    done
fi
LOAD_END=$(uptime | sed 's/.*load average: //')

# ---------------------------------------------------------------- checks after the run
{
    for g in gw gw2 gwr; do
        ops_var="OPS_$g"
        metrics=$(curl -fsS "http://127.0.0.1:${!ops_var}/metrics" || true)
        echo "gateway $g: $(grep -E '^outpost_(redis_(errors|fallback)_total|redis_connected|cache_lookups_total)' <<<"$metrics" | tr '\n' ' ')"
        echo "gateway $g: VmHWM $(awk '/VmHWM/ {print $2, $3}' "/proc/$(eval echo "\$PID_$g")/status")"
    done
    for n in backend nginx nginx2; do
        echo "nginx $n: VmHWM (worker) $(for p in $(pgrep -P "$(eval echo "\$PID_$n")"); do awk '/VmHWM/ {printf "%s %s ", $2, $3}' "/proc/$p/status"; done)"
    done
    echo "redis: $(redis-cli -p "$PORT_REDIS" info commandstats | tr -d '\r' | grep '^cmdstat' | cut -d, -f1 | tr '\n' ' ')"
    for f in "$RUN_DIR"/{gw,gw2,gwr,backend,nginx,nginx2,redis}.log; do
        # (Redis warns about vm.overcommit_memory at every start; not about this benchmark.)
        lines=$(grep -iE 'error|warn|panic' "$f" | grep -v 'overcommit' || true)
        if [[ -n $lines ]]; then
            echo "log $(basename "$f"): $(wc -l <<<"$lines") error/warning lines, first: $(head -1 <<<"$lines")"
        fi
    done
} >"$RUN_DIR/checks.txt" 2>&1 || true

echo "$TARGET_TABLE" | cut -d'|' -f1,5 >"$RUN_DIR/labels.txt"
printf '%s\n' "${IDS[@]}" >"$RUN_DIR/order.txt"
{
    printf 'ROUNDS=%q\nRATE=%q\nCONNS=%q\nDURATION=%q\nWARMUP=%q\n' "$ROUNDS" "$RATE" "$CONNS" "$DURATION" "$WARMUP"
    printf 'LATENCY_TOOL=%q\nLAT_CONNS=%q\nLOAD_MID=%q\nLOAD_END=%q\n' "$LATENCY_TOOL" "$LAT_CONNS" "$LOAD_MID" "$LOAD_END"
} >"$RUN_DIR/meta.env"
report
cat "$RUN_DIR/results.md"
log "raw data and logs: $RUN_DIR"
