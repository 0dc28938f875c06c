-- Fixed-window quota, windows aligned to multiples of the period since the epoch.
-- KEYS[1]  quota hash: w = window start (s), c = calls, b = bytes
-- ARGV     period_s, calls_limit (-1: none), bytes_limit (-1: none), d_calls, d_bytes,
--          enforce 0|1, count
-- Applies the change `count` times: with enforce, as many as fit, in order (a batch of
-- concurrent admissions decided as separate calls would be); without, once (count = 1).
-- Returns  {applied, calls, bytes, resets_in_s}
-- The key expires when its window ends, so a quota survives gateway restarts but not its window.
local period = tonumber(ARGV[1])
local climit = tonumber(ARGV[2])
local blimit = tonumber(ARGV[3])
local dc = tonumber(ARGV[4])
local db = tonumber(ARGV[5])
local enforce = ARGV[6] == '1'
local count = tonumber(ARGV[7] or '1')
local now = tonumber(redis.call('TIME')[1])
local start = now - (now % period)
local ends = start + period
local h = redis.call('HMGET', KEYS[1], 'w', 'c', 'b')
local c, b = 0, 0
if tonumber(h[1]) == start then
  c = tonumber(h[2]) or 0
  b = tonumber(h[3]) or 0
end
local applied = count
if enforce then
  if blimit >= 0 and b >= blimit then
    applied = 0
  elseif climit >= 0 then
    if dc > 0 then
      applied = math.min(count, math.floor((climit - c) / dc))
    elseif c + dc > climit then
      applied = 0
    end
  end
  if applied < 0 then applied = 0 end
end
if applied > 0 then
  c = c + applied * dc
  if c < 0 then c = 0 end
  b = b + applied * db
  redis.call('HSET', KEYS[1], 'w', string.format('%d', start), 'c', string.format('%d', c), 'b', string.format('%d', b))
  redis.call('EXPIREAT', KEYS[1], ends)
end
return { applied, c, b, ends - now }
