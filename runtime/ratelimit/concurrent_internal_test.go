package ratelimit

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/findmy/trading-operator/runtime/redis"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// Two requests of a user in flight together on one replica, Redis counting the first before
// the second but the second's goroutine running first once the replies are in (as the
// goroutines of a batch do, in any order): each answers what Redis counted for it, 1 left
// then 0, not 0 twice. The headers read the replica's bucket after both had taken from it,
// so the one Redis counted first said 0 as well; under 50 concurrent requests on one
// replica, two answered 0 and none 1 (TestConcurrentRequestsOnTwoReplicasAllowExactlyTheLimit
// failed 2 to 5 runs in 30 that way).
func TestConcurrentRequestsAnswerRedisCount(t *testing.T) {
	c, err := redis.OpenWith(redistest.SharedURL(t), redis.Options{
		Prefix: redistest.Prefix(t), PingInterval: 50 * time.Millisecond, OpTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	redistest.Eventually(t, 10*time.Second, "Redis answering", c.Healthy)
	l := New(Config{Trading: 2}, Options{Redis: c, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()

	var second Decision
	l.afterShared = func() {
		// The first request has Redis's answer and has not taken from the replica's bucket
		// yet: the second one runs to the end now.
		l.afterShared = nil
		second = l.Check(ctx, Trading, "u1")
	}
	first := l.Check(ctx, Trading, "u1")
	if !first.Shared || !second.Shared {
		t.Fatalf("decided without Redis: first %+v, second %+v", first, second)
	}
	if !first.Allowed || first.Remaining != 1 || !second.Allowed || second.Remaining != 0 {
		t.Fatalf("first %+v, second %+v: want both allowed, Remaining 1 then 0 (Redis's order)", first, second)
	}
	if d := l.Check(ctx, Trading, "u1"); d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("third: %+v, want refused with a Retry-After", d)
	}
}
