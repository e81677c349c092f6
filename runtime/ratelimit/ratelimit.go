// Package ratelimit enforces api.md's rate limits: login 5/min per client IP; trading 30/min,
// data 60/min, and a global 100/min and 1000/day per authenticated user; 0 turns a class off.
//
// With Redis the limits are shared by every replica: each class is a GCRA bucket in Redis
// (the algorithm and key layout of go-redis/redis_rate v10) with a burst equal to the limit, so N requests of a class may come
// at once and then one every period/N (30/min: 30 at once, then one every 2s); the per-day
// bucket refills smoothly (one request every 86.4s), it does not reset at midnight. While
// Redis is down (or without REDIS_URL) every replica limits on its own with
// golang.org/x/time/rate, the same shape per process (so N replicas allow N times the limit),
// logs the switch and sets the rate_limit_local_fallback gauge; when Redis answers again the
// shared buckets take over. The per-process buckets count this replica's requests all the
// time and refuse what they would refuse on their own, so neither switch hands a client a
// fresh budget (what a client used on a replica before an outage still counts on it during
// the outage, and what it used during the outage still counts on it afterwards).
//
// A request checks its class bucket and the two global buckets together, in one round trip
// (one Lua script implementing redis_rate's GCRA on the same state, for any number of
// buckets: redis_rate itself checks one bucket per call, under a key it prefixes with "rate:",
// where a deployment's REDIS_KEY_PREFIX must come first), all or nothing: a request is allowed
// only when every bucket allows it, and a refused request uses up nothing, so a client
// hammering a refused class does not also burn its global budget. The per-process fallback
// follows the same rule. The headers describe the tightest bucket: the refusing one, else
// the one with the fewest remaining requests.
//
// Which requests count: POST /api/auth/login per client IP (login); POST /api/auth/refresh
// and /api/auth/logout also in class login per client IP, each endpoint in a bucket of its
// own so that refreshing never locks a user out of logging in (they carry a refresh token, not
// an access token, so there is no user to count them for); trading (POST /api/orders, approve,
// reject) and data (GET under /api, /api/auth/me included) per user, and every authenticated
// request also in the two global buckets; a login also in the global buckets of its client
// IP (api.md: the global limits are over every class, and before login a client is its IP);
// a request to a trading or data route that authentication refuses (401: no, a garbage or an
// expired token) in the route's class per client IP, not in the global buckets (see allow).
// /openapi.json and the admin port are not limited.
//
// Client IP: the TCP peer, unless the peer is in TRUSTED_PROXIES; only then the right-most
// X-Forwarded-For entry that is not itself a trusted proxy. IPv6 clients are counted per /64.
//
// Wiring into runtime/http (cmd/tradingd serve):
//
//	limiter := ratelimit.New(ratelimit.Config{
//		Login: cfg.RateLimitLogin, Trading: cfg.RateLimitTrading, Data: cfg.RateLimitData,
//		GlobalPerMinute: cfg.RateLimitGlobalPerMinute, GlobalPerDay: cfg.RateLimitGlobalPerDay,
//		TrustedProxies: cfg.TrustedProxies, // []netip.Prefix
//	}, ratelimit.Options{Redis: rc /* *redis.Client or nil */, Metrics: m, Logger: logger})
//	httpapi.Config{ ...,
//		Guard: []httpapi.Middleware{func(rt httpapi.Route, next http.Handler) http.Handler {
//			return limiter.Route(rt.Class, rt.Pattern, next)
//		}},
//	}
//
// Guard runs inside authentication, so the principal (trading.PrincipalFromContext) is in
// the context for the per-user classes. Outside runtime/http, Middleware classifies by
// method and path itself, and Check is the building block for anything else.
package ratelimit

import (
	"context"
	"log/slog"
	"math"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/time/rate"

	"github.com/findmy/trading-operator/runtime/redis"
)

// Class is a rate-limit class; its name is the class label of rate_limit_rejections_total.
type Class string

const (
	Login        Class = "login"
	Trading      Class = "trading"
	Data         Class = "data"
	GlobalMinute Class = "global_minute"
	GlobalDay    Class = "global_day"
)

// Config holds the limits (requests per period; 0 turns a class off) and the proxies whose
// X-Forwarded-For is believed.
type Config struct {
	Login           int // per minute, per client IP (RATE_LIMIT_LOGIN)
	Trading         int // per minute, per user (RATE_LIMIT_TRADING)
	Data            int // per minute, per user (RATE_LIMIT_DATA)
	GlobalPerMinute int // per minute, per user (RATE_LIMIT_GLOBAL_PER_MINUTE)
	GlobalPerDay    int // per day, per user (RATE_LIMIT_GLOBAL_PER_DAY)
	TrustedProxies  []netip.Prefix
}

// DefaultConfig is api.md's defaults.
func DefaultConfig() Config {
	return Config{Login: 5, Trading: 30, Data: 60, GlobalPerMinute: 100, GlobalPerDay: 1000}
}

// Recorder receives rejections and fallback changes; *metrics.Metrics implements it.
type Recorder interface {
	RateLimited(class string)
	SetRateLimitFallback(local bool)
}

// Options are the limiter's dependencies.
type Options struct {
	// Redis shares the limits between replicas; nil limits per process only.
	Redis *redis.Client
	// Prefix goes in front of the Redis keys (default "rl:"), after the client's own prefix.
	Prefix  string
	Metrics Recorder
	Logger  *slog.Logger
}

// Decision is the outcome of a check.
type Decision struct {
	Allowed bool
	// Class is the bucket the headers describe: the one that refused, else the tightest.
	Class     Class
	Limit     int
	Remaining int
	// Reset is how long until the bucket is full again; RetryAfter how long until the next
	// request would be allowed (0 when allowed).
	Reset      time.Duration
	RetryAfter time.Duration
	// Shared is true when Redis decided (false: the per-process fallback).
	Shared bool
}

// Request names one bucket: a class and the key within it (client IP or user id).
type Request struct {
	Class Class
	Key   string
}

type limit struct {
	n      int
	period time.Duration
	// The script's arguments for this limit, boxed once: boxing them per request (an
	// int in an interface allocates) showed in profiles.
	nArg, secondsArg any
}

// Limiter checks requests against the configured limits. Safe for concurrent use.
type Limiter struct {
	cfg    Config
	limits map[Class]limit
	rdb    *redis.Client
	batch  *redis.Batcher
	prefix string // of every bucket's key in Redis (New)
	rec    Recorder
	log    *slog.Logger
	local  *otter.Cache[string, *rate.Limiter]

	fallback atomic.Bool

	// afterShared, when set (internal tests), runs between Redis's decision and the local
	// takes: it stands for the requests that run in between under concurrency.
	afterShared func()
}

// New builds a limiter. With Options.Redis it follows the client's health: shared while
// Redis answers, per process while it does not.
func New(cfg Config, o Options) *Limiter {
	if o.Prefix == "" {
		o.Prefix = "rl:"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &Limiter{
		cfg: cfg,
		limits: map[Class]limit{
			Login:        newLimit(cfg.Login, time.Minute),
			Trading:      newLimit(cfg.Trading, time.Minute),
			Data:         newLimit(cfg.Data, time.Minute),
			GlobalMinute: newLimit(cfg.GlobalPerMinute, time.Minute),
			GlobalDay:    newLimit(cfg.GlobalPerDay, 24*time.Hour),
		},
		rdb:    o.Redis,
		prefix: o.Prefix,
		rec:    o.Metrics,
		log:    o.Logger,
		// A local bucket expires when unused for its own period (a minute for most, a day
		// for the per-day one): by then it is full again, the same as no bucket. They exist
		// for every client while Redis answers too (they count what this replica lets
		// through), so a flood of client IPs, each a login bucket and two global ones,
		// leaves a minute's worth, not a day's. The size bound caps even that.
		local: otter.Must(&otter.Options[string, *rate.Limiter]{
			MaximumSize: 200_000,
			ExpiryCalculator: otter.ExpiryAccessingFunc(func(e otter.Entry[string, *rate.Limiter]) time.Duration {
				return time.Duration(float64(e.Value.Burst()) / float64(e.Value.Limit()) * float64(time.Second))
			}),
		}),
	}
	if o.Redis != nil {
		// The fixed part of every bucket's key, once: the client's prefix first, so that every
		// key of a deployment starts with it (REDIS_KEY_PREFIX); then "rate:", as redis_rate
		// names its buckets; then the limiter's own.
		l.prefix = o.Redis.Prefix() + "rate:" + o.Prefix
		l.batch = o.Redis.NewBatcher(allowAll, 4)
		o.Redis.OnHealthChange(func(healthy bool) { l.setFallback(!healthy) })
		l.fallback.Store(!o.Redis.Healthy())
	} else {
		l.fallback.Store(true)
		l.log.Info("rate limits are per process (no REDIS_URL): each replica allows the full limit")
	}
	if l.rec != nil {
		l.rec.SetRateLimitFallback(l.fallback.Load())
	}
	return l
}

func newLimit(n int, period time.Duration) limit {
	// Whole seconds: formatting a float per request showed in profiles.
	return limit{n: n, period: period, nArg: int64(n), secondsArg: int64(period / time.Second)}
}

func (l *Limiter) setFallback(local bool) {
	if l.fallback.Swap(local) == local {
		return
	}
	if local {
		l.log.Warn("rate limits fall back to per-process limiters while Redis is down: each replica allows the full limit")
	} else {
		l.log.Info("rate limits are shared through Redis again")
	}
	if l.rec != nil {
		l.rec.SetRateLimitFallback(local)
	}
}

// Local reports whether limits are currently enforced per process.
func (l *Limiter) Local() bool { return l.batch == nil || !l.rdb.Healthy() }

// Check checks one bucket.
func (l *Limiter) Check(ctx context.Context, class Class, key string) Decision {
	return l.CheckAll(ctx, Request{class, key})
}

// CheckAll checks the buckets together (see the package comment): allowed when every
// enabled bucket allows, else refused by the one that allows latest (its Retry-After is
// when the request would go through). With no enabled bucket the
// decision is Allowed with Limit 0 (no headers).
func (l *Limiter) CheckAll(ctx context.Context, reqs ...Request) Decision {
	bs := make([]bucket, 0, len(reqs))
	for _, r := range reqs {
		if lim := l.limits[r.Class]; lim.n > 0 {
			bs = append(bs, bucket{r, lim})
		}
	}
	if len(bs) == 0 {
		return Decision{Allowed: true}
	}
	d := l.decide(ctx, bs)
	if !d.Allowed && l.rec != nil {
		l.rec.RateLimited(string(d.Class))
	}
	return d
}

// key is a bucket's Redis key (see prefix).
func (l *Limiter) key(r Request) string {
	return l.prefix + string(r.Class) + ":" + r.Key
}

func (l *Limiter) decide(ctx context.Context, bs []bucket) Decision {
	if l.batch != nil && l.rdb.Healthy() {
		// The per-process buckets also count what this replica lets through while Redis
		// decides, and a request they refuse is refused: the switch to them when Redis goes
		// away, and back when it returns (it knows nothing of the requests allowed
		// meanwhile, and may have lost its state), would otherwise hand every client a
		// fresh budget. They count a subset of what Redis counts, so while Redis answers
		// they refuse only what this replica let through during an outage.
		// Each bucket of this replica's with the tokens it held before the round trip.
		local := make([]struct {
			tb     *rate.Limiter
			before float64
		}, len(bs))
		now := time.Now()
		var refused Decision
		for i, b := range bs {
			local[i].tb = l.localBucket(b.req, b.lim)
			if local[i].before = local[i].tb.TokensAt(now); local[i].before < 1 {
				// Refuses, takes nothing. Of several that refuse, the one that allows latest
				// answers: its Retry-After is when the request goes through.
				if d, _ := l.checkLocal(b.req, b.lim, now); refused.Class == "" || d.RetryAfter > refused.RetryAfter {
					refused = d
				}
			}
		}
		if refused.Class != "" {
			return refused
		}
		// The Batcher bounds the call with the operation timeout itself, and a failed call
		// fails the ones queued behind it: no timer per request.
		d, err := l.checkShared(ctx, bs)
		if l.afterShared != nil {
			l.afterShared()
		}
		if err == nil {
			if d.Allowed {
				// Taken at the time before the round trip, as if at Redis's decision or
				// earlier: taken later, a client waiting out Retry-After to the instant
				// could find its token a round trip short here while Redis allows it.
				for i, lb := range local {
					lb.tb.ReserveN(now, 1) // an unconditional take: Redis has allowed it
					// A bucket of this replica's that this request empties refuses the next
					// request here, whatever Redis says (after an outage Redis may not know
					// what this replica let through meanwhile): the headers say so. Counted
					// from the tokens seen before the round trip, not from the bucket now:
					// what had been taken then, Redis decided before this request; the
					// bucket now also holds the concurrent requests, taken in the order
					// their goroutines ran, not Redis's. Read now, of 50 concurrent requests
					// of a user on one replica (one HTTP/2 connection) the one Redis counted
					// first could answer 0, two 0s and no 1 in all. Read before, Remaining
					// stays Redis's, exactly as one by one, unless this replica's own count
					// is tighter. (The price: right after an outage, two concurrent
					// requests that together empty the bucket may both say 1; the next one
					// is still refused, with its Retry-After.)
					if rem, reset := leftAfterOne(lb.before, bs[i].lim); rem == 0 && d.Remaining > 0 {
						d.Class, d.Limit, d.Remaining, d.Reset = bs[i].req.Class, bs[i].lim.n, rem, reset
					}
				}
			}
			return d
		}
		// Redis did not answer: decide locally now and let the client's health tracking
		// switch the limiter over (and back when the pinger sees Redis again).
		l.rdb.ReportError(err)
	}
	return l.decideLocal(bs)
}

// decideLocal is the per-process fallback with the same all-or-nothing rule: tokens are
// reserved in order and given back when any bucket refuses. Of several that refuse, the one
// that allows latest answers, as in the script.
func (l *Limiter) decideLocal(bs []bucket) Decision {
	now := time.Now()
	taken := make([]*rate.Reservation, 0, len(bs))
	var best, refused Decision
	for i, b := range bs {
		d, res := l.checkLocal(b.req, b.lim, now)
		if !d.Allowed {
			if refused.Class == "" || d.RetryAfter > refused.RetryAfter {
				refused = d
			}
			continue
		}
		taken = append(taken, res)
		if i == 0 || d.Remaining < best.Remaining || d.Remaining == best.Remaining && d.Reset > best.Reset {
			best = d
		}
	}
	if refused.Class != "" {
		for _, r := range taken {
			r.CancelAt(now)
		}
		return refused
	}
	return best
}

func (l *Limiter) checkLocal(r Request, lim limit, now time.Time) (Decision, *rate.Reservation) {
	tb := l.localBucket(r, lim)
	res := tb.ReserveN(now, 1)
	d := Decision{Class: r.Class, Limit: lim.n}
	if delay := res.DelayFrom(now); !res.OK() || delay > 0 {
		res.CancelAt(now)
		d.RetryAfter = delay
	} else {
		d.Allowed = true
	}
	d.Remaining, d.Reset = localLeft(tb, lim, now)
	return d, res
}

// localLeft is what a per-process bucket has left at now, and how long until it is full.
func localLeft(tb *rate.Limiter, lim limit, now time.Time) (remaining int, reset time.Duration) {
	return left(tb.TokensAt(now), lim)
}

// leftAfterOne is what a per-process bucket that had tokens has left once one is taken.
func leftAfterOne(tokens float64, lim limit) (remaining int, reset time.Duration) {
	return left(tokens-1, lim)
}

func left(tokens float64, lim limit) (remaining int, reset time.Duration) {
	every := lim.period / time.Duration(lim.n)
	return max(0, int(math.Floor(tokens))), time.Duration((float64(lim.n) - tokens) * float64(every))
}

// localBucket is the per-process bucket of r.
func (l *Limiter) localBucket(r Request, lim limit) *rate.Limiter {
	key := string(r.Class) + ":" + strconv.Itoa(lim.n) + ":" + r.Key
	tb, _ := l.local.ComputeIfAbsent(key, func() (*rate.Limiter, bool) {
		return rate.NewLimiter(rate.Every(lim.period/time.Duration(lim.n)), lim.n), false
	})
	return tb
}
