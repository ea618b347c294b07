-- Charges a request's token buckets, all or nothing, at Redis's own clock.
--
-- KEYS[i]: bucket i. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its capacity, its refill per
-- microsecond, and this request's cost to it, in units (see limit.rs). Every number
-- here is an integer below 2^53, so doubles hold them exactly.
-- A stored bucket is "<units>:<microseconds>": its content at that Redis time. A
-- missing bucket is full; a bucket expires when it would be full again.
-- Returns {1 if admitted else 0, units in bucket i before this request's charge...}.

-- Redis < 5 replicates scripts verbatim, and TIME differs on a replica.
if redis.replicate_commands then
  redis.replicate_commands()
end

-- ceil(a / b) for integers: a / b is rounded to a double, so the quotient can be one off.
local function ceil_div(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do q = q - 1; r = r + b end
  while r >= b do q = q + 1; r = r - b end
  if r > 0 then q = q + 1 end
  return q
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local buckets = {}
local before = {}
local admitted = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local bucket = buckets[key]
  if not bucket then
    bucket = { units = capacity, at = now, capacity = capacity, rate = rate, cost = 0 }
    local stored = redis.call('GET', key)
    if stored then
      local units, at = string.match(stored, '^(%d+):(%d+)$')
      if not units then
        return redis.error_reply('edge-auth rls: unreadable bucket ' .. key)
      end
      units, at = math.min(tonumber(units), capacity), tonumber(at)
      -- A clock that stepped back (failover to another host) refills nothing, and the
      -- bucket keeps its later time: time never runs backwards for a bucket.
      if now > at then
        -- Past 2^53 the product is inexact but still above missing, so the test holds.
        local refill = (now - at) * rate
        if refill >= capacity - units then units = capacity else units = units + refill end
        at = now
      end
      bucket.units, bucket.at = units, at
    end
    buckets[key] = bucket
  end
  before[i] = bucket.units
  if bucket.units >= cost then
    bucket.units = bucket.units - cost
    bucket.cost = bucket.cost + cost
  else
    admitted = 0
  end
end

if admitted == 1 then
  for key, bucket in pairs(buckets) do
    if bucket.cost > 0 then
      local until_full = (bucket.at - now) + ceil_div(bucket.capacity - bucket.units, bucket.rate)
      redis.call('SET', key, string.format('%d:%d', bucket.units, bucket.at),
        'PX', string.format('%d', ceil_div(until_full, 1000)))
    end
  end
end
return { admitted, unpack(before) }
