package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/batch"
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

// When a script call fails (Redis hung or gone), the calls queued behind it get its error at
// once (batch.ErrAheadFailed) instead of trying again one batch after another, each waiting
// out its timeout. (The queue's mechanics are package batch's tests; this is the wiring.)
func TestBatcherFailureFailsTheQueue(t *testing.T) {
	srv := redistest.Start(t)
	c, err := OpenWith(srv.URL(), Options{Prefix: redistest.Prefix(t), OpTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv.Pause()
	defer srv.Resume()
	b := c.NewBatcher(goredis.NewScript(`return {tonumber(ARGV[3])}`), 1)
	errs := make(chan error, 4)
	for i := range 4 { // one goes to the paused server and hangs; three queue behind it
		go func() {
			_, err := b.Run(context.Background(), nil, i)
			errs <- err
		}()
	}
	redistest.Eventually(t, 5*time.Second, "three calls queued", func() bool { return b.calls.Queued() == 3 })
	ahead := 0
	for range 4 {
		err := <-errs
		if err == nil {
			t.Fatal("a call succeeded with Redis paused")
		}
		if errors.Is(err, batch.ErrAheadFailed) {
			ahead++
		}
	}
	if ahead != 3 {
		t.Fatalf("%d of the 3 queued calls got batch.ErrAheadFailed: the others tried again", ahead)
	}
}
