-- Takes back hits admitted by sliding_window.lua (increment-condition not met).
-- KEYS[1]  counter hash;  ARGV  slot, amount
-- A slot that has already expired (or a key that is gone) is left alone.
local c = redis.call('HGET', KEYS[1], ARGV[1])
if not c then return 0 end
local left = tonumber(c) - tonumber(ARGV[2])
if left > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', left))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
