package cache_test

import (
	"context"
	"testing"

	"github.com/maypok86/otter/v2"

	"github.com/findmy/trading-operator/runtime/cache"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// BenchmarkCachedPositions measures an L1 hit of Positions (with Redis configured as L2)
// against its baseline, a bare otter lookup: the difference is the generation lookup and
// the copy handed to the caller. No assertion on speed: compare the ns/op lines.
//
//	hack/services.sh go test -run '^$' -bench CachedPositions ./runtime/cache/
func BenchmarkCachedPositions(b *testing.B) {
	b.Run("baseline-otter-get", func(b *testing.B) {
		c := otter.Must(&otter.Options[string, []byte]{MaximumSize: 1000})
		c.Set("k", []byte("v"))
		for b.Loop() {
			if _, ok := c.GetIfPresent("k"); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("cached-positions", func(b *testing.B) {
		w := newWorld(b)
		obs := &counts{}
		p := replica(b, w, redistest.SharedURL(b), redistest.Prefix(b), cache.Options{Observer: obs})
		w.trade(b, p, "1")
		ctx := context.Background()
		if _, err := p.Positions(ctx, w.trader.UserID); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for b.Loop() {
			if _, err := p.Positions(ctx, w.trader.UserID); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if misses := obs.get("miss:l1:positions"); misses != 1 {
			b.Fatalf("%d L1 misses: the benchmark did not measure hits", misses)
		}
	})
}
