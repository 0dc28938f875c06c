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
