-- Fixed-window quota, windows aligned to multiples of the period since the epoch.
-- KEYS[1]  quota hash: w = window start (s), c = calls, b = bytes
-- ARGV     period_s, calls_limit (-1: none), bytes_limit (-1: none), d_calls, d_bytes, enforce 0|1
-- Returns  {allowed 0|1, calls, bytes, resets_in_s}
-- The key expires when its window ends, so a quota survives gateway restarts but not its window.
local period = tonumber(ARGV[1])
local climit = tonumber(ARGV[2])
local blimit = tonumber(ARGV[3])
local dc = tonumber(ARGV[4])
local db = tonumber(ARGV[5])
local enforce = ARGV[6] == '1'
local now = tonumber(redis.call('TIME')[1])
local start = now - (now % period)
local ends = start + period
local h = redis.call('HMGET', KEYS[1], 'w', 'c', 'b')
local c, b = 0, 0
if tonumber(h[1]) == start then
  c = tonumber(h[2]) or 0
  b = tonumber(h[3]) or 0
end
local after = c + dc
if after < 0 then after = 0 end
local allowed = 1
if enforce then
  if climit >= 0 and after > climit then allowed = 0 end
  if blimit >= 0 and b >= blimit then allowed = 0 end
end
if allowed == 1 then
  c = after
  b = b + db
  redis.call('HSET', KEYS[1], 'w', string.format('%d', start), 'c', string.format('%d', c), 'b', string.format('%d', b))
  redis.call('EXPIREAT', KEYS[1], ends)
end
return { allowed, c, b, ends - now }
