package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// allowAll is GCRA over several buckets in one round trip, all or nothing: a request is
// allowed only when every bucket allows it, and only then does it use up one request of
// each; a refused request costs nothing anywhere. The state of a bucket is the same as
// redis_rate's (the theoretical arrival time, in seconds since 2017-01-01, under
// "rate:<key>", with burst = limit), so a bucket can be checked by either.
//
// ARGV holds a limit and a period in seconds per key. The reply is the 1-based index of the
// first refusing bucket (0: allowed), then four values per bucket: allowed (0/1),
// remaining, retry-after and reset-after (seconds, as strings: Lua floats would be
// truncated to integers on the way out).
var allowAll = goredis.NewScript(`
local now = redis.call("TIME")
now = (now[1] - 1483228800) + (now[2] / 1000000)
local refused = 0
local out = {0}
local tats = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i]) / limit
  local tat = tonumber(redis.call("GET", KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - limit * interval)
  if diff < 0 then
    if refused == 0 then refused = i end
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, tostring(-diff))
    table.insert(out, tostring(tat - now))
  else
    tats[i] = new_tat
    table.insert(out, 1)
    table.insert(out, math.floor(diff / interval))
    table.insert(out, "-1")
    table.insert(out, tostring(new_tat - now))
  end
end
if refused == 0 then
  for i = 1, #KEYS do
    redis.call("SET", KEYS[i], tats[i], "EX", math.ceil(tats[i] - now))
  end
end
out[1] = refused
return out
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
	v, err := l.rdb.RunScript(ctx, allowAll, keys, args...).Slice()
	if err != nil {
		return Decision{}, err
	}
	if len(v) != 1+4*len(bs) {
		return Decision{}, fmt.Errorf("ratelimit: unexpected script reply of %d values", len(v))
	}
	refused, _ := v[0].(int64)
	pick := func(i int) Decision {
		vals := v[1+4*i : 5+4*i]
		allowed, _ := vals[0].(int64)
		remaining, _ := vals[1].(int64)
		d := Decision{
			Allowed: allowed == 1, Class: bs[i].req.Class, Limit: bs[i].lim.n, Remaining: int(remaining),
			Reset: seconds(vals[3]), Shared: true,
		}
		if !d.Allowed {
			d.RetryAfter = seconds(vals[2])
		}
		return d
	}
	if refused > 0 {
		return pick(int(refused) - 1), nil
	}
	best := pick(0)
	for i := 1; i < len(bs); i++ {
		if d := pick(i); d.Remaining < best.Remaining {
			best = d
		}
	}
	return best, nil
}

func seconds(v any) time.Duration {
	s, _ := v.(string)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0
	}
	return time.Duration(f * float64(time.Second))
}
