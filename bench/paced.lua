-- wrk script for bench/proxy.sh latency runs: a fixed request rate (BENCH_RATE requests/s,
-- over all connections of the thread; run wrk with -t1) and microsecond latency percentiles.
--
-- wrk measures latency from the moment a request is written, so the pacing delay is not
-- counted. Requests follow a schedule (start + n / rate); a request that falls behind it is
-- sent at once. wrk's timers have millisecond granularity, so single requests jitter by up to
-- 1 ms around the schedule; the average rate is exact while the server keeps up. Like hey's
-- -q, this is closed loop per connection: a stalled response delays that connection's next
-- request (coordinated omission), so tails are optimistic when a target cannot keep up.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("BENCH_RATE") or "1000")
local start, n = nil, 0

function delay()
  local t = now_ms()
  if start == nil then start = t end
  n = n + 1
  local d = start + n * 1000 / rate - t
  if d < 0 then return 0 end
  return math.floor(d)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "PACED requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f sockerr=%d status=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
