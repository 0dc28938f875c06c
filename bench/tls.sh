#!/usr/bin/env bash
# HTTPS benchmark: the gateway terminating TLS side by side with nginx terminating TLS, in one
# run, as ratios. Both use the same ECDSA P-256 certificate and proxy to the same nginx backend
# over keep-alive HTTP/1.1.
#
#   bench/tls.sh                    # build, run, print the markdown table
#   ROUNDS=5 DURATION=10 bench/tls.sh
#
# Targets (127.0.0.1, free ports, one worker each):
#   nginx     nginx 1 worker: `listen ssl http2`, plain reverse proxy (keep-alive upstream)
#   gateway   outpost gateway, offline mode, 1 worker: subscription key + 2 set-header
#             (the API of bench/proxy.sh's target 3; nginx does less work per request)
#
# Phases, per round and target (interleaved, the first target alternating per round):
#   keep-alive  `wrk -t1 -c$CONNS` over HTTPS/1.1 keep-alive: requests/s and the CPU time of
#               the process under test per request (/proc utime+stime)
#   handshakes  the same with `Connection: close`: every request a new TCP connection and a
#               full TLS handshake (wrk resumes no sessions), so requests/s = handshakes/s
#   h2          `h2load -c$H2_CONNS -m$H2_STREAMS` (ALPN h2, multiplexed), when h2load is
#               installed (Debian: nghttp2-client)
#
# Settings (environment): ROUNDS=3 DURATION=8 WARMUP=2 CONNS=32 H2_CONNS=8 H2_STREAMS=16
# H2_REQUESTS=200000 BUILD=1 RUN_DIR=
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-16}
H2_REQUESTS=${H2_REQUESTS:-200000}
BUILD=${BUILD:-1}
RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/outpost-tls-bench.XXXXXX)}
SUB_KEY=bench0123456789abcdef0123456789abcdef
CLK_TCK=$(getconf CLK_TCK)

for tool in nginx wrk openssl curl awk; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
HAVE_H2LOAD=0
command -v h2load >/dev/null && HAVE_H2LOAD=1
mkdir -p "$RUN_DIR"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


wait_https() {
    local url=$1 i
    for i in $(seq 100); do
        if curl -kfsS -o /dev/null -H "Ocp-Apim-Subscription-Key: $SUB_KEY" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "not answering: $url (logs in $RUN_DIR)" >&2
    return 1
}


# ---------------------------------------------------------------- set-up
if [[ $BUILD == 1 ]]; then
    log "cargo build --release --bin outpost"
    (cd "$ROOT" && cargo build --release --bin outpost)
fi
OUTPOST=$ROOT/target/release/outpost

log "certificate: ECDSA P-256, self-signed, CN=localhost"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" 2>/dev/null

nginx_conf() { # TEMPLATE NAME [sed args...]
    local template=$1 name=$2
    shift 2
    mkdir -p "$RUN_DIR/$name"
    sed -e "s|@DIR@|$RUN_DIR/$name|g" "$@" "$template" >"$RUN_DIR/$name/nginx.conf"
}

free_port; PORT_BACKEND=$PORT
nginx_conf "$BENCH/nginx-backend.conf.in" backend -e "s|@PORT@|$PORT_BACKEND|g"
nginx -p "$RUN_DIR/backend" -c "$RUN_DIR/backend/nginx.conf" -g 'daemon off;' \
    >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")

free_port; PORT_NGINX=$PORT
cat >"$RUN_DIR/nginx-tls.conf.in" <<EOF
worker_processes 1;
pid @DIR@/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    http2_max_requests 10000000;
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX ssl http2 backlog=4096;
        ssl_certificate $RUN_DIR/cert.pem;
        ssl_certificate_key $RUN_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
nginx_conf "$RUN_DIR/nginx-tls.conf.in" nginx
nginx -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx/nginx.conf" -g 'daemon off;' \
    >"$RUN_DIR/nginx.log" 2>&1 &
PID_NGINX=$!
PIDS+=("$PID_NGINX")

# The gateway: bench/proxy.sh's file plus the certificate for localhost.
indent() { sed 's/^/      /' "$1"; }
{
    # The `jwt` API is not measured here: its JWKS URL points at the discard port (the gateway
    # fetches keys off the request path, so nothing waits for it).
    sed -e "s|@BACKEND@|127.0.0.1:$PORT_BACKEND|g" -e "s|@JWKS@|http://127.0.0.1:9/jwks.json|g" \
        "$BENCH/gateway.yaml.in" |
        sed '/^gateways:/,$d'
    echo "named-values:"
    echo "  - name: tls-cert"
    echo "    value: |"
    indent "$RUN_DIR/cert.pem"
    echo "  - name: tls-key"
    echo "    secret: true"
    echo "    value: |"
    indent "$RUN_DIR/key.pem"
    echo "gateways:"
    echo "  - name: bench"
    echo "    apis: [plain, limited, limited-quota, cached]"
    echo "    hostnames:"
    echo '      - {hostname: localhost, certificate-pem: "{{tls-cert}}", key-pem: "{{tls-key}}"}'
} >"$RUN_DIR/gateway.yaml"
free_port; PORT_GW=$PORT
free_port; PORT_GW_HTTP=$PORT
free_port; PORT_GW_OPS=$PORT
env OUTPOST_LISTEN_HTTP="127.0.0.1:$PORT_GW_HTTP" OUTPOST_LISTEN_HTTPS="127.0.0.1:$PORT_GW" \
    OUTPOST_LISTEN_OPS="127.0.0.1:$PORT_GW_OPS" OUTPOST_LISTEN_WORKERS=1 \
    OUTPOST_LISTEN_HTTPS_DEFAULT_HOSTNAME=localhost OUTPOST_LOG_LEVEL=warn \
    "$OUTPOST" gateway --offline-config "$RUN_DIR/gateway.yaml" >"$RUN_DIR/gateway.log" 2>&1 &
PID_GATEWAY=$!
PIDS+=("$PID_GATEWAY")

URL_nginx="https://127.0.0.1:$PORT_NGINX/plain/item"
URL_gateway="https://127.0.0.1:$PORT_GW/plain/item"
wait_https "$URL_nginx"
wait_https "$URL_gateway"

# The processes whose CPU is counted: nginx's workers (not the master), the gateway.
sut_pids() {
    case $1 in
        nginx) pgrep -P "$PID_NGINX" ;;
        gateway) echo "$PID_GATEWAY" ;;
    esac
}

# ---------------------------------------------------------------- measuring
RESULTS=$RUN_DIR/results.tsv
: >"$RESULTS"
HDR="Ocp-Apim-Subscription-Key: $SUB_KEY"

# wrk_phase TARGET PHASE ROUND [extra wrk args]
wrk_phase() {
    local target=$1 phase=$2 round=$3
    shift 3
    local url_var="URL_$target"
    local url=${!url_var}
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "$HDR" "$@" "$url" >/dev/null 2>&1 || true
    local pids before after out rps errors
    pids=$(sut_pids "$target")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$HDR" "$@" "$url" 2>&1)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    echo "$out" >"$RUN_DIR/$target-$phase-$round.wrk"
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    errors=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}')
    local total
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    local cpu_us
    cpu_us=$(awk -v t=$((after - before)) -v n="$total" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$round" "$target" "$rps" "$cpu_us" "$errors" >>"$RESULTS"
    log "round $round $phase $target: $rps req/s, $cpu_us µs CPU/req, errors $errors"
}

h2_phase() {
    local target=$1 round=$2
    local url_var="URL_$target"
    local url=${!url_var}
    h2load -n "$((H2_REQUESTS / 10))" -c "$H2_CONNS" -m "$H2_STREAMS" -H "$HDR" "$url" >/dev/null 2>&1 || true
    local pids before after out rps errors
    pids=$(sut_pids "$target")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(h2load -n "$H2_REQUESTS" -c "$H2_CONNS" -m "$H2_STREAMS" -H "$HDR" "$url" 2>&1)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    echo "$out" >"$RUN_DIR/$target-h2-$round.h2load"
    rps=$(echo "$out" | awk '/^finished in/ {gsub(/,/, ""); print $4}')
    errors=$(echo "$out" | awk '/^requests:/ {print $10 + $12 + $14}')
    local succeeded
    succeeded=$(echo "$out" | awk '/^status codes:/ {print $3}')
    local cpu_us
    cpu_us=$(awk -v t=$((after - before)) -v n="${succeeded:-0}" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' h2 "$round" "$target" "$rps" "$cpu_us" "$errors" >>"$RESULTS"
    log "round $round h2 $target: $rps req/s, $cpu_us µs CPU/req, errors $errors"
}

for round in $(seq "$ROUNDS"); do
    order=(nginx gateway)
    (( round % 2 == 0 )) && order=(gateway nginx)
    for target in "${order[@]}"; do
        wrk_phase "$target" keep-alive "$round"
        wrk_phase "$target" handshakes "$round" -H "Connection: close"
        [[ $HAVE_H2LOAD == 1 ]] && h2_phase "$target" "$round"
    done
done

# ---------------------------------------------------------------- report
{
    echo "### HTTPS run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    echo "cpus: $(nproc); load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'); wrk -t1 -c$CONNS -d${DURATION}s after ${WARMUP}s; h2load -c$H2_CONNS -m$H2_STREAMS -n$H2_REQUESTS; $ROUNDS rounds"
    echo '```'
    echo
    echo "Medians of the rounds; ratio = gateway / nginx (per round, median)."
    echo
    echo "| phase | nginx req/s | gateway req/s | throughput ratio | nginx CPU µs/req | gateway CPU µs/req | CPU ratio | errors (nginx / gateway) |"
    echo "|---|---|---|---|---|---|---|---|"
    awk -F'\t' -v rounds="$ROUNDS" '
        { rps[$1, $3, $2] = $4; cpu[$1, $3, $2] = $5; err[$1, $3] += $6; seen[$1] = 1 }
        function med(arr, phase, target,    a, n, i, j, x) {
            n = 0
            for (i = 1; i <= rounds; i++) if ((phase, target, i) in arr) a[++n] = arr[phase, target, i] + 0
            if (n == 0) return 0
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function ratio(arr, phase,    r, i, n, a, j, x) {
            n = 0
            for (i = 1; i <= rounds; i++)
                if ((phase, "nginx", i) in arr && arr[phase, "nginx", i] > 0)
                    a[++n] = arr[phase, "gateway", i] / arr[phase, "nginx", i]
            if (n == 0) return "–"
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return sprintf("%.2f×", (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
        }
        END {
            split("keep-alive handshakes h2", phases, " ")
            for (k = 1; k <= 3; k++) {
                p = phases[k]
                if (!(p in seen)) continue
                printf "| %s | %.0f | %.0f | %s | %.1f | %.1f | %s | %d / %d |\n", p,
                    med(rps, p, "nginx"), med(rps, p, "gateway"), ratio(rps, p),
                    med(cpu, p, "nginx"), med(cpu, p, "gateway"), ratio(cpu, p),
                    err[p, "nginx"], err[p, "gateway"]
            }
        }' "$RESULTS"
} | tee "$RUN_DIR/results.md"
log "raw results in $RUN_DIR"
