package main

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// stallProxy forwards TCP connections to addr until stall, after which it neither forwards
// nor answers anything, new connections included, while keeping every socket open: a
// database that is stopped (SIGSTOP) or partitioned away, as its clients see it. Before
// that, delay makes it slow instead: every chunk is held that long before it is forwarded.
type stallProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	stalled bool
	delay   time.Duration
	conns   []net.Conn
	// dropped is closed when the first bytes are dropped after stall: a query is stuck.
	dropped  chan struct{}
	dropOnce sync.Once
}

func newStallProxy(t *testing.T, addr string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, dropped: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			stalled := p.stalled
			p.mu.Unlock()
			if stalled {
				continue // accepted, never answered
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, s)
			p.mu.Unlock()
			go p.copy(s, c)
			go p.copy(c, s)
		}
	}()
	return p
}

// copy forwards src to dst until the proxy stalls; the bytes read after that are dropped.
func (p *stallProxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		stalled, delay := p.stalled, p.delay
		p.mu.Unlock()
		if stalled {
			p.dropOnce.Do(func() { close(p.dropped) })
			_, _ = io.Copy(io.Discard, src)
			return
		}
		time.Sleep(delay)
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// slow holds every chunk for d (each way) before forwarding it; 0 forwards at once again.
func (p *stallProxy) slow(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// With the database hung, SIGTERM stops tradingd after the drain and a short wait for the
// pool, exit 0: closing the pool waited up to 15 s per connection for a goodbye the database
// never answered, so the exit took about 20 s whatever SHUTDOWN_GRACE said, and a pod with a
// shorter termination grace was killed.
func TestServeStopsWithDatabaseHung(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	if r := tradingd(t, map[string]string{"DATABASE_URL": dsn}, "", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newStallProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	p := startServe(t, map[string]string{
		"DATABASE_URL":   u.String(),
		"JWT_KEYS":       jwtKeys,
		"LISTEN_ADDR":    "127.0.0.1:0",
		"ADMIN_ADDR":     "127.0.0.1:0",
		"DEMO_USERS":     "true",
		"SHUTDOWN_GRACE": "1s",
	})
	api, _ := p.waitLog("serving")["api_addr"].(string)
	code, out := login(t, api, "trader1", "password123")
	token, _ := out["access_token"].(string)
	if code != http.StatusOK || token == "" {
		t.Fatalf("login: %d %v", code, out)
	}

	proxy.stall()
	// A request in flight on the hung database when SIGTERM comes.
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/orders", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-proxy.dropped: // the request's query is stuck in the database
	case <-time.After(30 * time.Second):
		t.Fatal("the request never reached the database")
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exit := p.wait()
	took := time.Since(start)
	if exit != 0 {
		t.Errorf("exit %d after SIGTERM with the database hung, want 0", exit)
	}
	// Not a speed figure: the bound tells a bounded stop (about 4 s here) from the 15 s
	// per-connection wait it replaces.
	if took > 12*time.Second {
		t.Errorf("SIGTERM with SHUTDOWN_GRACE=1s and the database hung took %v to exit", took.Round(time.Second))
	}
	p.waitLog("database pool not closed: the database does not answer; stopped")
	// The request the end of the grace cut off is the server's doing: 503, not the 499 of a
	// client that went away.
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range p.logs {
		if line["msg"] == "request" && line["route"] == "GET /api/orders" && line["status"] != float64(http.StatusServiceUnavailable) {
			t.Errorf("the request cut off by the shutdown was logged as %v, want 503", line["status"])
		}
	}
}

// With Redis hung (SIGSTOP: connections open, no answer), SIGTERM stops tradingd about as
// promptly as with Redis up. A replica that had been through Redis outages took up to 2 s
// (here 1.8 to 3.8 s) to exit after logging "database pool closed; stopped": closing the
// Redis client waited for the health probe in flight, whose reads and dials only their own
// timeouts ended. Three replicas, so that some probe is surely in flight at the signal. With
// no request in flight the stop takes no part of SHUTDOWN_GRACE; what may remain is a
// subscription's handshake in flight (go-redis bounds it by its 500 ms dial timeout).
func TestServeStopsWithRedisHung(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{
		"DATABASE_URL":   pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":       jwtKeys,
		"REDIS_URL":      srv.URL(),
		"LISTEN_ADDR":    "127.0.0.1:0",
		"ADMIN_ADDR":     "127.0.0.1:0",
		"SHUTDOWN_GRACE": "1s",
	}
	var replicas []replica
	for range 3 {
		replicas = append(replicas, startReplica(t, env))
	}
	srv.Pause()
	defer srv.Resume()
	for _, r := range replicas {
		waitReadyz(t, r.admin, "degraded", "/readyz degraded while Redis is hung")
	}
	start := time.Now()
	for _, r := range replicas {
		if err := r.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range replicas {
		exit := r.proc.wait()
		took := time.Since(start)
		if exit != 0 {
			t.Errorf("replica %d: exit %d after SIGTERM with Redis hung, want 0", i, exit)
		}
		r.proc.waitLog("database pool closed; stopped")
		// Not a speed figure: the grace and half again, against whole seconds before.
		if took > 1500*time.Millisecond {
			t.Errorf("replica %d: SIGTERM with SHUTDOWN_GRACE=1s, no request in flight and Redis hung took %v to exit", i, took.Round(10*time.Millisecond))
		}
	}
}
