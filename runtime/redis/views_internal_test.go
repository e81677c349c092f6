package redis

import (
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
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
