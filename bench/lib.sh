# Helpers shared by the bench/*.sh scripts (sourced, not run): logging, free loopback ports,
# CPU time of processes.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

USED_PORTS=" "
# free_port: sets PORT to a port nobody listens on (and that this script has not handed out).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            PORT=$p
            return
        fi
    done
}

# cpu_ticks PID... : utime+stime of the processes (all threads), in clock ticks.
cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        t=$((t + v))
    done
    echo "$t"
}

# b64url: standard input as unpadded base64url.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# jwt_fixture DIR: an RSA key made with openssl (DIR/jwt-key.pem), its public JWKS in
# DIR/jwks/jwks.json (kid `bench`; serve DIR/jwks) and BENCH_JWT, an RS256 token it signs
# (`sub: bench`, valid for a day), for the targets that validate a JWT against a JWKS URL
# (bench/gateway.yaml.in, API `jwt`).
jwt_fixture() {
    local dir=$1 n header payload
    mkdir -p "$dir/jwks"
    openssl genrsa -out "$dir/jwt-key.pem" 2048 2>/dev/null
    n=$(openssl rsa -in "$dir/jwt-key.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
    printf '{"keys":[{"kty":"RSA","kid":"bench","use":"sig","alg":"RS256","n":"%s","e":"AQAB"}]}\n' \
        "$n" >"$dir/jwks/jwks.json"
    header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
    payload=$(printf '{"sub":"bench","exp":%d}' $(($(date +%s) + 86400)) | b64url)
    BENCH_JWT="$header.$payload.$(printf '%s' "$header.$payload" |
        openssl dgst -sha256 -sign "$dir/jwt-key.pem" | b64url)"
}
