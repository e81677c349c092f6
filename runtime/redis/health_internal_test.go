package redis

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
)

// The hooks (the limiter's fallback and its rate_limit_local_fallback gauge, redis_up) end
// on the state the client ends in, however close together two transitions come: a request
// that saw a broken connection marks Redis down just as the pinger marks it up. Called
// outside any lock, the hooks of the earlier transition could run last, and redis_up said 0
// and the limiter "per process" while Redis answered, until the next outage.
func TestHooksEndOnTheFinalState(t *testing.T) {
	c := &Client{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var mu sync.Mutex
	seen := true
	c.OnHealthChange(func(ok bool) { mu.Lock(); seen = ok; mu.Unlock() })
	c.healthy.Store(true)
	down := errors.New("connection reset")
	wrong := 0
	for range 20000 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; c.setHealthy(false, down) }()
		go func() { defer wg.Done(); <-start; c.setHealthy(true, nil) }()
		close(start)
		wg.Wait()
		mu.Lock()
		if seen != c.Healthy() {
			wrong++
			seen = c.Healthy() // start the next round consistent
		}
		mu.Unlock()
	}
	if wrong > 0 {
		t.Fatalf("in %d of 20000 rounds the hooks were last told the opposite of the client's state", wrong)
	}
}
