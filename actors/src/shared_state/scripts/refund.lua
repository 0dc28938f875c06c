-- Takes back hits admitted by sliding_window.lua (increment-condition not met).
-- KEYS[1]  counter hash;  ARGV  slot, amount
-- A slot that has already left the window (its field is gone) is left alone: its units are no
-- longer in the running total either.
local c = redis.call('HGET', KEYS[1], ARGV[1])
if not c then return 0 end
local amount = math.min(tonumber(ARGV[2]), tonumber(c))
local left = tonumber(c) - amount
if left > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', left))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = (tonumber(redis.call('HGET', KEYS[1], 't')) or 0) - amount
if total < 0 then total = 0 end
redis.call('HSET', KEYS[1], 't', string.format('%d', total))
return 1
