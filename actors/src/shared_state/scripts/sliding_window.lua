-- Sliding-window check-and-increment of `count` checks of `increment` each (see window.rs for
-- the rules and their error bound). The checks are granted in order while they fit, so one call
-- decides a batch of concurrent checks exactly as `count` calls of one would.
-- KEYS[1]  counter hash: field <slot index> = units recorded in that slot,
--          t = units in all counted slots, o = no slot older than this holds units
-- ARGV     limit, slot_ms, slots, increment, count[, lease, spread]
--          lease: checks to lease to the caller's local budget on top of the `count` checks,
--          when all of those fit: at most 1 / spread of what still fits after them (so that
--          leases shrink to nothing as the counter fills and the last units are decided here,
--          one check at a time). Leased units are recorded now, in the current slot.
-- Returns  {granted, remaining, retry_after_ms, slot, leased, slot_left_ms}; remaining and
--          retry_after_ms are what the first refused check sees (remaining after the granted
--          and leased ones when all fit); slot_left_ms: until the current slot ends.
-- Time comes from the Redis server, so every gateway node agrees on the slots. The running
-- total makes a call O(1): expired slots are subtracted once, when the window leaves them.
local limit = tonumber(ARGV[1])
local slot_ms = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local inc = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local want = tonumber(ARGV[6] or '0')
local spread = tonumber(ARGV[7] or '1')
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
local leased = 0
if inc > 0 then
  local fit = math.floor(math.max(limit - used, 0) / inc)
  granted = math.min(count, fit)
  if granted == count and want > 0 then
    leased = math.min(want, math.floor((fit - granted) / spread))
  end
end
local units = (granted + leased) * inc
if units > 0 then
  used = used + units
  redis.call('HSET', key, curf, string.format('%d', (here or 0) + units),
    't', string.format('%d', used), 'o', string.format('%d', o))
  -- The first hit of a slot sets the expiry: n + 2 slots later, every slot is out of the
  -- window, so the key can go (an idle counter costs no memory).
  if not here then redis.call('PEXPIRE', key, (n + 2) * slot_ms) end
elseif moved then
  redis.call('HSET', key, 't', string.format('%d', used), 'o', string.format('%d', o))
end
local remaining = limit - used
if remaining < 0 then remaining = 0 end
-- Less one: `now` is rounded down to the millisecond.
local slot_left = math.max((cur + 1) * slot_ms - now - 1, 0)
if granted == count then return { granted, remaining, 0, cur, leased, slot_left } end
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
return { granted, remaining, retry, cur, 0, slot_left }
