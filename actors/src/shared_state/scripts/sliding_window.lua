-- Sliding-window check-and-increment of `count` checks of `increment` each (see window.rs for
-- the rules and their error bound). The checks are granted in order while they fit, so one call
-- decides a batch of concurrent checks exactly as `count` calls of one would.
-- KEYS[1]  counter hash: field <slot index> = units recorded in that slot,
--          t = units in all counted slots, o = no slot older than this holds units
-- ARGV     limit, slot_ms, slots, increment, count
-- Returns  {granted, remaining, retry_after_ms, slot}; remaining and retry_after_ms are what
--          the first refused check sees (remaining after the granted ones when all fit).
-- Time comes from the Redis server, so every gateway node agrees on the slots. The running
-- total makes a call O(1): expired slots are subtracted once, when the window leaves them.
local limit = tonumber(ARGV[1])
local slot_ms = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local inc = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = math.floor(now / slot_ms)
local oldest = cur - n
local curf = string.format('%d', cur)
local h = redis.call('HMGET', key, 't', 'o', curf)
local used = tonumber(h[1]) or 0
local o = tonumber(h[2]) or cur
local here = tonumber(h[3])
local moved = false
if o < oldest then
  moved = true
  if oldest - o > 4 * n then
    -- Cannot happen while the key lives (it expires n + 2 slots after its last hit); recount
    -- from the slots rather than walk a long range.
    used = 0
    local flat = redis.call('HGETALL', key)
    for i = 1, #flat, 2 do
      local b = tonumber(flat[i])
      if b then
        if b < oldest then
          redis.call('HDEL', key, flat[i])
        else
          used = used + tonumber(flat[i + 1])
        end
      end
    end
  else
    local gone = {}
    for b = o, oldest - 1 do gone[#gone + 1] = string.format('%d', b) end
    local vals = redis.call('HMGET', key, unpack(gone))
    for i = 1, #vals do used = used - (tonumber(vals[i]) or 0) end
    redis.call('HDEL', key, unpack(gone))
    if used < 0 then used = 0 end
  end
  o = oldest
end
local granted = count
if inc > 0 then granted = math.min(count, math.floor(math.max(limit - used, 0) / inc)) end
if granted > 0 then
  used = used + granted * inc
  redis.call('HSET', key, curf, string.format('%d', (here or 0) + granted * inc),
    't', string.format('%d', used), 'o', string.format('%d', o))
  -- The first hit of a slot sets the expiry: n + 2 slots later, every slot is out of the
  -- window, so the key can go (an idle counter costs no memory).
  if not here then redis.call('PEXPIRE', key, (n + 2) * slot_ms) end
elseif moved then
  redis.call('HSET', key, 't', string.format('%d', used), 'o', string.format('%d', o))
end
local remaining = limit - used
if remaining < 0 then remaining = 0 end
if granted == count then return { granted, remaining, 0, cur } end
-- Refused: the next check fits once the oldest slots holding `need` units have expired.
local need = used + inc - limit
local retry = n * slot_ms
local fields = {}
for b = o, cur do fields[#fields + 1] = string.format('%d', b) end
local vals = redis.call('HMGET', key, unpack(fields))
for i = 1, #vals do
  need = need - (tonumber(vals[i]) or 0)
  if need <= 0 then
    retry = math.max((o + i - 1 + 1 + n) * slot_ms - now, 1)
    break
  end
end
return { granted, remaining, retry, cur }
