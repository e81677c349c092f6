package redis

import (
	"context"
	"testing"
	"time"
)

// replyError is an error reply from the server, as go-redis returns it (a redis.Error).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// A probe that failed after Redis answered something else does not mark it down (a dial lost
// while Redis was stopped fails after it came back, behind the answers that mark it up); one
// that failed with no answer since it began does, and a probe that succeeded always counts.
func TestStaleProbe(t *testing.T) {
	started := time.Now()
	for _, tc := range []struct {
		name       string
		err        error
		lastAnswer time.Time
		stale      bool
	}{
		{"failed, answered since", context.DeadlineExceeded, started.Add(time.Millisecond), true},
		{"failed, no answer since", context.DeadlineExceeded, started.Add(-time.Millisecond), false},
		{"succeeded", nil, started.Add(time.Millisecond), false},
		// The ping's own error reply moved LastAnswer: it is Redis's answer, and counts.
		{"error reply", replyError("LOADING Redis is loading the dataset in memory"), started.Add(time.Millisecond), false},
	} {
		if got := staleProbe(tc.err, started, tc.lastAnswer); got != tc.stale {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.stale)
		}
	}
}
