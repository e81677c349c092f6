package ratelimit

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// allowAll is GCRA over several buckets, all or nothing: a request is allowed only when
// every bucket allows it, and only then does it use up one request of each; a refused
// request costs nothing anywhere. The state of a bucket is the same as redis_rate's (the
// theoretical arrival time, in seconds since 2017-01-01, under "rate:<key>" after the
// deployment's REDIS_KEY_PREFIX, with burst = limit), so without a prefix a bucket can be
// checked by either.
//
// It decides a batch of requests (redis.Batcher: the requests in flight together share one
// call): KEYS holds each request's buckets in turn; ARGV, per request, its number of
// buckets, the number of arguments that follow, and a limit and a period in whole seconds
// per bucket. The requests are decided in order, each seeing the buckets as the ones
// before it left them, so a batch decides exactly as the same requests one by one. The
// reply is four integers per request:
// refused: {index of the refusing bucket that allows latest (1-based), 0, retry-after us,
// reset-after us}: its retry-after is when every bucket allows the request;
// allowed: {0, index of the tightest bucket (fewest remaining; of equals, the one that fills
// last), remaining, reset-after us}.
// It runs on every request, so it does little: one MGET, and one SET per bucket a request
// of the batch used.
var allowAll = goredis.NewScript(`
local t = redis.call("TIME")
local now = (t[1] - 1483228800) + (t[2] / 1000000)
local stored = redis.call("MGET", unpack(KEYS))
local tat = {}
for i = 1, #KEYS do
  if tat[KEYS[i]] == nil then tat[KEYS[i]] = tonumber(stored[i]) or false end
end
local out, used, new = {}, {}, {}
local k, a = 0, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  a = a + 2
  local pick, remaining, reset, refused, wait = 0, 0, 0, false, 0
  for i = 1, n do
    local key = KEYS[k + i]
    local limit = tonumber(ARGV[a])
    local interval = tonumber(ARGV[a + 1]) / limit
    a = a + 2
    local cur = tat[key] or now
    if cur < now then cur = now end
    local new_tat = cur + interval
    local diff = now - (new_tat - limit * interval)
    if diff < 0 then
      -- Of the buckets that refuse, the one that allows latest answers.
      if not refused or -diff > wait then
        pick, wait, reset = i, -diff, cur - now
      end
      refused = true
    elseif not refused then
      new[i] = new_tat
      -- Seconds since 2017 in doubles are exact to about 0.1 us, and the subtractions
      -- above land that much short of a boundary: the first request of a limit of 100
      -- left 98.999999... A microsecond (TIME's resolution) of slack counts it as 99;
      -- at most limit - 1 are left after a request, whatever the slack adds to tiny intervals.
      local left = math.min(math.floor((diff + 0.000001) / interval), limit - 1)
      -- Of buckets with as many left, the one that fills last.
      if pick == 0 or left < remaining or (left == remaining and new_tat - now > reset) then
        pick, remaining, reset = i, left, new_tat - now
      end
    end
  end
  if refused then
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] =
      pick, 0, math.floor(wait * 1000000), math.floor(reset * 1000000)
  else
    for i = 1, n do
      tat[KEYS[k + i]] = new[i]
      used[KEYS[k + i]] = true
    end
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] =
      0, pick, remaining, math.floor(reset * 1000000)
  end
  k = k + n
end
for key in pairs(used) do
  redis.call("SET", key, tat[key], "EX", math.ceil(tat[key] - now))
end
return out
`)

type bucket struct {
	req Request
	lim limit
}

// checkShared decides the buckets in Redis (allowAll, batched with the requests in flight)
// and returns the decision of the refusing bucket, or of the tightest one when all allow.
func (l *Limiter) checkShared(ctx context.Context, bs []bucket) (Decision, error) {
	keys := make([]string, len(bs))
	args := make([]any, 0, 2*len(bs))
	for i, b := range bs {
		keys[i] = l.key(b.req)
		args = append(args, b.lim.nArg, b.lim.secondsArg)
	}
	v, err := l.batch.Run(ctx, keys, args...)
	if err != nil {
		return Decision{}, err
	}
	n := int64(len(bs))
	switch {
	case v[0] > 0 && v[0] <= n: // refused by bucket v[0]
		b := bs[v[0]-1]
		return Decision{Allowed: false, Class: b.req.Class, Limit: b.lim.n, Remaining: 0,
			RetryAfter: micros(v[2]), Reset: micros(v[3]), Shared: true}, nil
	case v[0] == 0 && v[1] >= 1 && v[1] <= n: // allowed; bucket v[1] has the fewest left
		b := bs[v[1]-1]
		return Decision{Allowed: true, Class: b.req.Class, Limit: b.lim.n, Remaining: int(v[2]),
			Reset: micros(v[3]), Shared: true}, nil
	}
	return Decision{}, fmt.Errorf("ratelimit: unexpected script reply %v", v)
}

func micros(v int64) time.Duration {
	if v < 0 {
		return 0
	}
	return time.Duration(v) * time.Microsecond
}
