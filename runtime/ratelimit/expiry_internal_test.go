package ratelimit

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A per-process bucket is forgotten once unused for its own period (full again by then, the
// same as none), not after a day: since they count every client while Redis answers too, a
// flood of client IPs kept 200,000 of them (about 45 MB) for a day. Only the per-day bucket
// lives that long.
func TestLocalBucketsExpireAfterTheirPeriod(t *testing.T) {
	l := New(DefaultConfig(), Options{Logger: slog.New(slog.DiscardHandler)})
	l.CheckAll(context.Background(),
		Request{Class: Login, Key: "198.51.100.7"},
		Request{Class: GlobalMinute, Key: "u1"},
		Request{Class: GlobalDay, Key: "u1"})
	seen := 0
	for key := range l.local.Keys() {
		e, ok := l.local.GetEntryQuietly(key)
		if !ok {
			continue
		}
		seen++
		want := time.Minute
		if strings.HasPrefix(key, string(GlobalDay)+":") {
			want = 24 * time.Hour
		}
		if got := e.ExpiresAfter(); got > want || got < want-10*time.Second {
			t.Errorf("bucket %s expires after %v, want its period %v", key, got, want)
		}
	}
	if seen != 3 {
		t.Fatalf("%d local buckets, want 3", seen)
	}
}
