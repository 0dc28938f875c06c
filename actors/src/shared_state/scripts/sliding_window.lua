-- Sliding-window check-and-increment (see window.rs for the rules and their error bound).
-- KEYS[1]  counter hash: field = slot index, value = hits recorded in that slot
-- ARGV     limit, slot_ms, slots, increment
-- Returns  {allowed 0|1, remaining, retry_after_ms, slot}
-- Time comes from the Redis server, so every gateway node agrees on the slots.
local limit = tonumber(ARGV[1])
local slot_ms = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local inc = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = math.floor(now / slot_ms)
local oldest = cur - n
local flat = redis.call('HGETALL', KEYS[1])
local used = 0
local live = {}
for i = 1, #flat, 2 do
  local b = tonumber(flat[i])
  local c = tonumber(flat[i + 1])
  if b < oldest then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    used = used + c
    live[#live + 1] = { b, c }
  end
end
if used + inc <= limit then
  redis.call('HINCRBY', KEYS[1], string.format('%d', cur), inc)
  redis.call('PEXPIRE', KEYS[1], (n + 2) * slot_ms)
  return { 1, limit - used - inc, 0, cur }
end
table.sort(live, function(a, b) return a[1] < b[1] end)
local need = used + inc - limit
local retry = n * slot_ms
for _, e in ipairs(live) do
  need = need - e[2]
  if need <= 0 then
    retry = math.max((e[1] + 1 + n) * slot_ms - now, 1)
    break
  end
end
local remaining = limit - used
if remaining < 0 then remaining = 0 end
return { 0, remaining, retry, cur }
