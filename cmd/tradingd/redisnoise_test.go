package main

import (
	"strings"
	"testing"
	"time"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// libraryLines returns the lines go-redis itself logged so far (component "go-redis").
func libraryLines(p *process) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, line := range p.logs {
		if line["component"] == "go-redis" {
			msg, _ := line["msg"].(string)
			out = append(out, msg)
		}
	}
	return out
}

// TestServeTellsARedisOutageOnce: while Redis is down, go-redis complains about every dial
// that failed (the pinger dials every 100 ms), and two replicas logged about 620 such
// warnings in 100 s of outages, about 3 a second each, burying tradingd's own lines ("redis
// cannot be used ...", "redis is answering again ..."). Each kind of complaint is now logged
// the first time in an outage, still as a structured warning, and repeated at most every
// libraryRepeatEvery while the outage lasts; a second outage is told again.
func TestServeTellsARedisOutageOnce(t *testing.T) {
	srv := redistest.Start(t)
	r := startReplica(t, map[string]string{
		"DATABASE_URL": pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"REDIS_URL":    srv.URL(),
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	})
	for outage := 1; outage <= 2; outage++ {
		before := len(libraryLines(r.proc))
		srv.Stop()
		waitReadyz(t, r.admin, "degraded", "/readyz degraded while Redis is down")
		// The outage's length, not a measurement: long enough for go-redis to fail a dozen
		// dials (a complaint every half second or so), well below the reminders' interval.
		time.Sleep(4 * time.Second)
		srv.Restart()
		waitFor(t, func() bool {
			code, body := get(t, r.admin+"/readyz")
			return code == 200 && !strings.Contains(body, "degraded")
		}, "/readyz no longer degraded once Redis is back")
		lines := libraryLines(r.proc)[before:]
		if len(lines) == 0 {
			t.Errorf("outage %d: go-redis's complaint was not logged at all: the first occurrence must show", outage)
		}
		// One line per kind of complaint (a failed dial; on a loaded machine perhaps a
		// connection the pool could not hand out too).
		if len(lines) > 3 {
			t.Errorf("outage %d of about 4 s: %d go-redis lines, want one per kind of complaint:\n%s", outage, len(lines), strings.Join(lines, "\n"))
		}
	}
}
