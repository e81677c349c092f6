package ratelimit

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// allowAll is GCRA over several buckets in one round trip, all or nothing: a request is
// allowed only when every bucket allows it, and only then does it use up one request of
// each; a refused request costs nothing anywhere. The state of a bucket is the same as
// redis_rate's (the theoretical arrival time, in seconds since 2017-01-01, under
// "rate:<key>", with burst = limit), so a bucket can be checked by either.
//
// ARGV holds a limit and a period in whole seconds per key. The reply is four integers:
// refused: {index of the first refusing bucket (1-based), 0, retry-after us, reset-after us};
// allowed: {0, index of the tightest bucket (fewest remaining), remaining, reset-after us}.
// It runs on every request, so it does little: one MGET, no strings built, one SET per
// bucket only when the request is allowed.
var allowAll = goredis.NewScript(`
local t = redis.call("TIME")
local now = (t[1] - 1483228800) + (t[2] / 1000000)
local tats = redis.call("MGET", unpack(KEYS))
local pick, remaining, reset = 0, 0, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i]) / limit
  local tat = tonumber(tats[i]) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - limit * interval)
  if diff < 0 then
    return {i, 0, math.floor(-diff * 1000000), math.floor((tat - now) * 1000000)}
  end
  tats[i] = new_tat
  local left = math.floor(diff / interval)
  if pick == 0 or left < remaining then
    pick, remaining, reset = i, left, new_tat - now
  end
end
for i = 1, #KEYS do
  redis.call("SET", KEYS[i], tats[i], "EX", math.ceil(tats[i] - now))
end
return {0, pick, remaining, math.floor(reset * 1000000)}
`)

type bucket struct {
	req Request
	lim limit
}

// checkShared runs allowAll for the buckets and returns the decision of the refusing
// bucket, or of the tightest one when all allow.
func (l *Limiter) checkShared(ctx context.Context, bs []bucket) (Decision, error) {
	keys := make([]string, len(bs))
	args := make([]any, 0, 2*len(bs))
	for i, b := range bs {
		keys[i] = "rate:" + l.key(b.req)
		args = append(args, b.lim.n, int64(b.lim.period/time.Second)) // whole seconds: formatting a float per request showed in profiles
	}
	v, err := l.rdb.RunScript(ctx, allowAll, keys, args...).Int64Slice()
	if err != nil {
		return Decision{}, err
	}
	n := int64(len(bs))
	switch {
	case len(v) != 4:
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
