-- wrk script for bench/proxy.sh max-throughput runs: one machine-readable result line.
-- status = responses with a status of 400 or more; the others are socket errors.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MAX requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status))
end
