package ratelimit_test

import (
	"context"
	"testing"

	"github.com/findmy/trading-operator/runtime/ratelimit"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// BenchmarkLimiterAllow measures one request's checks with Redis (class + two global
// buckets, one script: one round trip) against its baseline, a Redis PING (one round trip), and the
// per-process fallback. No assertion on speed.
//
//	hack/services.sh go test -run '^$' -bench LimiterAllow ./runtime/ratelimit/
func BenchmarkLimiterAllow(b *testing.B) {
	url := redistest.SharedURL(b)
	ctx := context.Background()
	cfg := ratelimit.Config{Data: 1 << 30, GlobalPerMinute: 1 << 30, GlobalPerDay: 1 << 30}
	b.Run("baseline-redis-ping", func(b *testing.B) {
		rc := openRedis(b, url, redistest.Prefix(b))
		for b.Loop() {
			if err := rc.Redis().Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("shared-data-request", func(b *testing.B) {
		l := ratelimit.New(cfg, ratelimit.Options{Redis: openRedis(b, url, redistest.Prefix(b))})
		reqs := []ratelimit.Request{{Class: ratelimit.Data, Key: "u"}, {Class: ratelimit.GlobalMinute, Key: "u"}, {Class: ratelimit.GlobalDay, Key: "u"}}
		for b.Loop() {
			if d := l.CheckAll(ctx, reqs...); !d.Allowed || !d.Shared {
				b.Fatalf("%+v", d)
			}
		}
	})
	// Many requests at once, as under load: the requests in flight together share one script call.
	b.Run("shared-data-request-64-concurrent", func(b *testing.B) {
		l := ratelimit.New(cfg, ratelimit.Options{Redis: openRedis(b, url, redistest.Prefix(b))})
		b.SetParallelism(32) // 64 goroutines on 2 cores
		b.RunParallel(func(pb *testing.PB) {
			reqs := []ratelimit.Request{{Class: ratelimit.Data, Key: "u"}, {Class: ratelimit.GlobalMinute, Key: "u"}, {Class: ratelimit.GlobalDay, Key: "u"}}
			for pb.Next() {
				if d := l.CheckAll(ctx, reqs...); !d.Allowed || !d.Shared {
					b.Errorf("%+v", d)
					return
				}
			}
		})
	})
	b.Run("local-data-request", func(b *testing.B) {
		l := ratelimit.New(cfg, ratelimit.Options{})
		reqs := []ratelimit.Request{{Class: ratelimit.Data, Key: "u"}, {Class: ratelimit.GlobalMinute, Key: "u"}, {Class: ratelimit.GlobalDay, Key: "u"}}
		for b.Loop() {
			if d := l.CheckAll(ctx, reqs...); !d.Allowed {
				b.Fatalf("%+v", d)
			}
		}
	})
}
