package postgres_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// cutProxy forwards TCP connections to addr until cut closes every one of them at once, as
// a server that crashed (immediate shutdown, a killed host, a failover) leaves its clients:
// the socket ends without a word from PostgreSQL.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, addr string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A connection that ends without a word from the server (unexpected EOF, then "conn closed"
// on the next use) is the database being unavailable (503), like a refused connection: it
// answered 500 "internal error" when PostgreSQL crashed under load. Every call of the
// services is tried on a pool whose connections were all cut.
func TestConnectionCutIsUnavailable(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewMigratedDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	db, err := postgres.Open(context.Background(), postgres.Config{URL: u.String(), MinConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	orders, portfolio, users := postgres.NewOrderService(db, postgresCfg()), postgres.NewPortfolioService(db), postgres.NewUserService(db)
	risk := &trading.User{ID: uuid.New(), Username: "risk", Roles: []trading.Role{trading.RoleRisk}}

	calls := map[string]func() error{
		"ping": func() error { return db.Ping(context.Background()) },
		"find orders": func() error {
			_, _, err := orders.FindOrders(as(risk), trading.OrderFilter{})
			return err
		},
		"positions": func() error {
			_, err := portfolio.Positions(as(risk), risk.ID)
			return err
		},
		"user by id": func() error {
			_, err := users.FindUserByID(context.Background(), uuid.New())
			return err
		},
	}
	for name, call := range calls {
		// Warm the pool's connections, cut them all, and call: whichever connection the call
		// gets, it finds the socket closed.
		for range 4 {
			_ = db.Ping(context.Background())
		}
		proxy.cut()
		err := call()
		if err != nil && trading.ErrorCode(err) != trading.EUNAVAILABLE && trading.ErrorCode(err) != trading.ENOTFOUND {
			t.Errorf("%s after the connections were cut: %q (%v), want unavailable", name, trading.ErrorCode(err), err)
		}
		// The first failure resets the pool (its other connections went the same way), so the
		// next call gets a new connection instead of the next dead one.
		if err := call(); err != nil && trading.ErrorCode(err) != trading.ENOTFOUND {
			t.Errorf("%s: the call after the first failure: %v", name, err)
		}
	}
}
