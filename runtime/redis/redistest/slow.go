package redistest

import (
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SlowLink is a TCP proxy in front of a Redis whose replies it can hold back: a Redis that
// answers everything, only late (a busy server, a congested network); or that it can cut
// off, as a network partition does, while Redis keeps its data.
type SlowLink struct {
	ln    net.Listener
	delay atomic.Int64 // nanoseconds every reply waits before it is passed on
	cut   atomic.Bool
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// Slow starts a proxy to the Redis at addr (host:port); it is closed when the test ends.
func Slow(t testing.TB, addr string) *SlowLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: listen: %v", err)
	}
	s := &SlowLink{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if s.cut.Load() {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, c, u)
			s.mu.Unlock()
			s.wg.Add(2)
			go func() { defer s.wg.Done(); _, _ = io.Copy(u, c); u.Close() }()
			go func() { defer s.wg.Done(); s.replies(c, u); c.Close() }()
		}
	}()
	t.Cleanup(s.close)
	return s
}

// replies passes what Redis sends on to the client, each chunk after the delay.
func (s *SlowLink) replies(c, u net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			if d := time.Duration(s.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// SetDelay makes every reply from now on wait d (0: none).
func (s *SlowLink) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Cut closes every connection through the link and refuses new ones until Mend: Redis is
// out of reach, with its data intact, and nothing sent meanwhile reaches it.
func (s *SlowLink) Cut() {
	s.cut.Store(true)
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
}

// Mend lets connections through again.
func (s *SlowLink) Mend() { s.cut.Store(false) }

// URL is the proxy's redis:// URL.
func (s *SlowLink) URL() string {
	return "redis://127.0.0.1:" + strconv.Itoa(s.ln.Addr().(*net.TCPAddr).Port) + "/0"
}

func (s *SlowLink) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
