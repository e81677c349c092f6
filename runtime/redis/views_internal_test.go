package redis

import (
	"context"
	"testing"

	"github.com/google/uuid"
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

// With many scripts in flight a script goes through the pipeliner; one Redis has not seen
// yet (NOSCRIPT) is loaded there too, and the result still reaches its caller.
func TestRunScriptPipelinedLoadsUnknownScript(t *testing.T) {
	c, err := OpenWith(redistest.SharedURL(t), Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.scripts.Store(directScripts) // as if that many were in flight: the next one is pipelined
	script := goredis.NewScript(`return {ARGV[1], "` + uuid.NewString() + `"}`)
	for _, want := range []string{"first", "second"} { // NOSCRIPT, then known
		v, err := c.RunScript(context.Background(), script, nil, want).StringSlice()
		if err != nil || len(v) != 2 || v[0] != want {
			t.Fatalf("%s: %v, %v", want, v, err)
		}
	}
	if n := c.scripts.Load(); n != directScripts {
		t.Fatalf("%d scripts counted in flight after the calls returned, want %d", n, directScripts)
	}
}
