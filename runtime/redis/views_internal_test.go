package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// The views of an invalidation travel as the ack key's suffix; a key without one (a
// replica of an older version publishing) or with a value this version does not know
// means every view: dropping too much costs a miss, too little a stale read.
func TestViewsOfAckKey(t *testing.T) {
	for key, want := range map[string]trading.Views{
		"t1:inv-ack:0a1b2c.1":       trading.ViewPositions,
		"t1:inv-ack:0a1b2c.2":       trading.ViewSummary,
		"t1:inv-ack:0a1b2c.3":       trading.AllViews,
		"t1:inv-ack:0a1b2c":         trading.AllViews,
		"with.dot:inv-ack:0a1b2c":   trading.AllViews,
		"with.dot:inv-ack:0a1b2c.2": trading.ViewSummary,
		"t1:inv-ack:0a1b2c.0":       trading.AllViews,
		"t1:inv-ack:0a1b2c.9":       trading.AllViews,
		"t1:inv-ack:0a1b2c.x":       trading.AllViews,
		"t1:inv-ack:0a1b2c.-1":      trading.AllViews,
	} {
		if got := viewsOf(key); got != want {
			t.Errorf("viewsOf(%q) = %b, want %b", key, got, want)
		}
	}
}

// A trade's symbol travels hex-encoded between "~" and the views; keys without it (other
// invalidations, older replicas) and malformed ones name no symbol. The views of a key with
// a symbol read as before, which is what a replica of an older version sees.
func TestSymbolOfAckKey(t *testing.T) {
	for key, want := range map[string]string{
		"t1:inv-ack:0a1b2c~4254432f555344.3":   "BTC/USD",
		"inv-ack:c1:0a1b2c~4554482f555344.3":   "ETH/USD",
		"t1:inv-ack:0a1b2c.3":                  "",
		"t1:inv-ack:0a1b2c":                    "",
		"t1~4254:inv-ack:0a1b2c.3":             "",
		"t1:inv-ack:0a1b2c~zz.3":               "",
		"t1:inv-ack:0a1b2c~4254432f555344":     "",
		"with.dot:inv-ack:0a~4254432f555344.1": "BTC/USD",
	} {
		if got := symbolOf(key); got != want {
			t.Errorf("symbolOf(%q) = %q, want %q", key, got, want)
		}
	}
	if got := viewsOf("t1:inv-ack:0a1b2c~4254432f555344.1"); got != trading.ViewPositions {
		t.Errorf("views of a key with a symbol: %b, want %b", got, trading.ViewPositions)
	}
}

// A caller that gives up while queued behind a script in flight leaves the queue at once
// (its request is then decided without Redis), and the queue does not hand it a batch.
func TestBatcherCallerGivesUpWhileQueued(t *testing.T) {
	c, err := OpenWith(redistest.SharedURL(t), Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := c.NewBatcher(goredis.NewScript(`return {tonumber(ARGV[3])}`), 1)
	b.inFlight = maxScriptsInFlight // as if calls were in flight: the next one queues
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := b.Run(ctx, nil, 7); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued call: %v, want its deadline", err)
	}
	if len(b.queue) != 0 {
		t.Fatalf("%d calls left in the queue", len(b.queue))
	}
	b.inFlight = 0
	if v, err := b.Run(context.Background(), nil, 8); err != nil || len(v) != 1 || v[0] != 8 {
		t.Fatalf("next call: %v, %v", v, err)
	}
	if b.inFlight != 0 {
		t.Fatalf("%d in flight after the calls returned", b.inFlight)
	}
}

// When a script call fails (Redis hung or gone), the calls queued behind it get its error at
// once instead of trying again one batch after another, each waiting out its timeout.
func TestBatcherFailureFailsTheQueue(t *testing.T) {
	srv := redistest.Start(t)
	c, err := OpenWith(srv.URL(), Options{Prefix: redistest.Prefix(t), OpTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv.Pause()
	defer srv.Resume()
	b := c.NewBatcher(goredis.NewScript(`return {tonumber(ARGV[3])}`), 1)
	b.inFlight = maxScriptsInFlight // the leader below holds the slot; the others queue
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			_, err := b.Run(context.Background(), nil, i)
			errs <- err
		}()
	}
	redistest.Eventually(t, 5*time.Second, "three queued calls", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == 3
	})
	leader := &batchCall{args: []any{9}}
	b.send(context.Background(), []*batchCall{leader})
	if leader.err == nil {
		t.Fatal("a script call with Redis paused succeeded")
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, errAheadFailed) || !errors.Is(err, leader.err) {
			t.Fatalf("a queued call got %v, want the failed call's error (%v) at once: it tried again", err, leader.err)
		}
	}
	if b.inFlight != 0 || len(b.queue) != 0 {
		t.Fatalf("after the failure: %d in flight, %d queued", b.inFlight, len(b.queue))
	}
}
