package redis

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// LibraryRepeatEvery is how often go-redis's same complaint is logged again while it
// repeats (a reminder that the outage goes on); between reminders the repeats are counted.
const LibraryRepeatEvery = 30 * time.Second

// LogLibraryTo sends go-redis's own diagnostics (a dial that failed, a connection it
// dropped) to l, as warnings, instead of the standard library logger's plain lines on
// stderr, which broke LOG_FORMAT=json. go-redis has one logger per process.
//
// While Redis is down go-redis says the same thing on every failed dial, about twice a
// second with the pinger alone (two replicas logged some 620 such lines in 100 s of
// outages), burying the client's own lines that say when Redis went away and when it came
// back. So each kind of complaint (its format) is logged the first time, then at most every
// LibraryRepeatEvery with the count of those left out ("repeated"), and again at once after
// any Client saw Redis answering again: every outage shows its first complaint.
func LogLibraryTo(l *slog.Logger) {
	g := &libraryLogger{l: l, seen: map[string]*repeats{}}
	library.Store(g)
	goredis.SetLogger(g)
}

// library is the logger LogLibraryTo installed, told of recoveries (libraryRecovered).
var library atomic.Pointer[libraryLogger]

// libraryRecovered starts a new outage for the library's complaints: Redis answered again.
func libraryRecovered() {
	if g := library.Load(); g != nil {
		g.reset()
	}
}

type libraryLogger struct {
	l  *slog.Logger
	mu sync.Mutex
	// seen holds one entry per format go-redis logged with since the last recovery: the
	// formats are constants in go-redis's source, so it stays small.
	seen map[string]*repeats
}

type repeats struct {
	every   rate.Sometimes
	skipped atomic.Int64
}

func (g *libraryLogger) Printf(ctx context.Context, format string, v ...any) {
	g.mu.Lock()
	r := g.seen[format]
	if r == nil {
		r = &repeats{every: rate.Sometimes{Interval: LibraryRepeatEvery}}
		g.seen[format] = r
	}
	g.mu.Unlock()
	logged := false
	r.every.Do(func() {
		logged = true
		msg := strings.TrimSpace(fmt.Sprintf(format, v...))
		if n := r.skipped.Swap(0); n > 0 {
			g.l.WarnContext(ctx, msg, "component", "go-redis", "repeated", n)
		} else {
			g.l.WarnContext(ctx, msg, "component", "go-redis")
		}
	})
	if !logged {
		r.skipped.Add(1)
	}
}

func (g *libraryLogger) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.seen) > 0 {
		g.seen = map[string]*repeats{}
	}
}
