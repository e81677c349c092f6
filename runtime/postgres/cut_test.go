package postgres_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/cache"
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

// commitLossProxy forwards TCP connections to addr; once armed with a command tag, the
// server's answer to the next command that completes with it (COMMIT, or INSERT 0 1 for a
// statement in a transaction of its own) never reaches the client: the proxy swallows it and
// closes the connection, as a crash or a network failure right after the commit leaves a
// client that does not know whether its transaction went through.
type commitLossProxy struct {
	ln    net.Listener
	armed atomic.Pointer[[]byte] // the CommandComplete message to swallow
}

// arm makes the proxy lose the answer to the next command completing with tag: PostgreSQL's
// CommandComplete message, 'C', its length (4 + the tag and its NUL), the tag.
func (p *commitLossProxy) arm(tag string) {
	msg := append([]byte{'C', 0, 0, 0, byte(4 + len(tag) + 1)}, tag...)
	msg = append(msg, 0)
	p.armed.Store(&msg)
}

func newCommitLossProxy(t *testing.T, addr string) *commitLossProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &commitLossProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
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
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				defer s.Close()
				buf, tail := make([]byte, 64<<10), []byte(nil)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						seen := append(tail, buf[:n]...)
						if msg := p.armed.Load(); msg != nil && bytes.Contains(seen, *msg) {
							p.armed.Store(nil)
							return // committed; the client hears nothing more
						}
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						tail = append(tail[:0], seen[max(0, len(seen)-32):]...)
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// lossyEnv is env with its services on a direct pool, and a cache in front of the portfolio
// that decisions sent through a commitLossProxy (lossy) invalidate.
type lossyEnv struct {
	*env
	proxy   *commitLossProxy
	lossyDB *postgres.DB
	lossy   *postgres.OrderService
	cached  *cache.Portfolio
	lookups *countingObserver
}

// countingObserver counts the cache's lookups that missed, which go to the database.
type countingObserver struct{ misses atomic.Int64 }

func (o *countingObserver) CacheHit(level, pattern string)  {}
func (o *countingObserver) CacheMiss(level, pattern string) { o.misses.Add(1) }

func newLossyEnv(t *testing.T) *lossyEnv {
	t.Helper()
	dsn := pgtest.NewMigratedDatabase(t)
	direct := openDB(t, dsn)
	e := &env{db: direct, users: postgres.NewUserService(direct), orders: postgres.NewOrderService(direct, postgresCfg()),
		portfolio: postgres.NewPortfolioService(direct)}
	e.trader1 = e.addUser(t, "trader1", trading.RoleTrader)
	e.risk1 = e.addUser(t, "risk1", trading.RoleRisk)
	lookups := &countingObserver{}
	cached := cache.NewPortfolio(e.portfolio, cache.Options{Logger: slog.New(slog.DiscardHandler), Observer: lookups})
	t.Cleanup(cached.Close)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCommitLossProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	lossyDB := openDB(t, u.String())
	lossy := postgres.NewOrderService(lossyDB,
		postgres.OrderServiceConfig{Invalidator: cached, Logger: slog.New(slog.DiscardHandler)})
	return &lossyEnv{env: e, proxy: proxy, lossyDB: lossyDB, lossy: lossy, cached: cached, lookups: lookups}
}

// wantReapprovalConflict approves order id again through orders, as a client retrying an
// approval whose answer it did not get, and wants the 409 of an order already approved.
func wantReapprovalConflict(t *testing.T, orders *postgres.OrderService, risk *trading.User, id uuid.UUID) {
	t.Helper()
	if _, _, err := orders.ApproveOrder(as(risk), id); trading.ErrorCode(err) != trading.ECONFLICT {
		t.Fatalf("the retried approval: %v, want conflict (already approved)", err)
	}
}

// wantPending checks the pending_orders of trader1's summary read through the cache.
func (e *lossyEnv) wantPending(t *testing.T, when string, want int) {
	t.Helper()
	s, err := e.cached.Summary(as(e.trader1), e.trader1.ID)
	if err != nil || s.PendingOrders != want {
		t.Fatalf("summary %s: %+v, %v, want pending_orders %d", when, s, err, want)
	}
}

// wantPositions checks trader1's positions read through the cache: as many as quantities,
// with those quantities.
func (e *lossyEnv) wantPositions(t *testing.T, when string, quantities ...string) {
	t.Helper()
	got, err := e.cached.Positions(as(e.trader1), e.trader1.ID)
	if err != nil || len(got) != len(quantities) {
		t.Fatalf("positions %s: %v, %v, want %d", when, got, err, len(quantities))
	}
	for i, q := range quantities {
		eq(t, "position "+when, got[i].Quantity.Decimal, q)
	}
}

// An approval whose COMMIT went through but whose answer was lost answers 503 (the outcome
// is unknown to it), and the trade is there: the order reads approved, a retried approval
// gets 409. The cache must not go on showing the position from before the trade. It did,
// until the entry expired (30 s): in a chaos test (PostgreSQL paused for 5 s under load) an
// approval timed out after its COMMIT had reached the server, the retry got 409, the order
// read approved, and the trader's positions on the other replica still lacked the trade.
func TestApprovalWhoseCommitAnswerIsLostInvalidates(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "1", "100")
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	e.wantPositions(t, "before the approval", "1")

	e.proxy.arm("COMMIT")
	_, _, err := e.lossy.ApproveOrder(as(e.risk1), o.ID)
	if trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Fatalf("the approval whose answer was lost: %v, want unavailable", err)
	}
	if n := e.count(t, `SELECT count(*) FROM trades WHERE order_id = $1`, o.ID); n != 1 {
		t.Fatalf("%d trades for the order, want 1 (the COMMIT went through)", n)
	}
	wantReapprovalConflict(t, e.orders, e.risk1, o.ID)
	e.wantPositions(t, "after the approval whose answer was lost", "3")
}

// Likewise a rejection: the summary's pending_orders went on counting the rejected order
// until the entry expired (10 s).
func TestRejectionWhoseCommitAnswerIsLostInvalidates(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	e.wantPending(t, "before the rejection", 1)

	e.proxy.arm("COMMIT")
	if _, err := e.lossy.RejectOrder(as(e.risk1), o.ID, "too big"); trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Fatalf("the rejection whose answer was lost: %v, want unavailable", err)
	}
	if n := e.count(t, `SELECT count(*) FROM orders WHERE id = $1 AND status = 'rejected'`, o.ID); n != 1 {
		t.Fatalf("the order is not rejected (the COMMIT went through)")
	}
	e.wantPending(t, "after the rejection whose answer was lost", 0)
}

// Likewise a submission (one INSERT, its own transaction): the summary's pending_orders did
// not count the new order until the entry expired (10 s), though a retry with the same
// client_order_id answered 200 with it.
func TestSubmissionWhoseCommitAnswerIsLostInvalidates(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	e.wantPending(t, "before the submission", 0)

	e.proxy.arm("INSERT 0 1")
	_, _, err := e.lossy.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "2", "100", "lost-answer"))
	if trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Fatalf("the submission whose answer was lost: %v, want unavailable", err)
	}
	if n := e.count(t, `SELECT count(*) FROM orders WHERE client_order_id = 'lost-answer'`); n != 1 {
		t.Fatalf("%d orders, want 1 (the INSERT went through)", n)
	}
	e.wantPending(t, "after the submission whose answer was lost", 1)
}

// A submission that failed before its INSERT was sent (the database refusing connections:
// nothing reached it) changed nothing, and the cached summary must go on answering. Every
// such failure dropped it, on every replica, so during an outage the next GET /api/summary
// went to the dead database and answered 503 where the cache could have answered.
func TestSubmissionNeverSentKeepsCache(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	e.wantPending(t, "before the submission", 0)
	misses := e.lookups.misses.Load()

	// The database goes away: new connections are refused, the pool's open ones are closed.
	e.proxy.ln.Close()
	e.lossyDB.Pool().Reset()
	_, _, err := e.lossy.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	if trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Fatalf("the submission to a database refusing connections: %v, want unavailable", err)
	}
	e.wantPending(t, "after the submission that was never sent", 0)
	if n := e.lookups.misses.Load() - misses; n != 0 {
		t.Fatalf("the summary after the submission that was never sent missed the cache %d time(s), want 0", n)
	}
}

// A replica killed between an approval's COMMIT and its invalidation leaves every cache
// (its L2 entry in Redis too) showing the position without the trade. The client's retry
// gets 409 from another replica, and the order reads approved; the positions it reads next
// must then show the trade. They did not until the entry expired (30 s): seen in a chaos test
// that killed a replica (kill -9) under load. Here the first approval goes through a service
// with no cache to tell, as the killed replica's did not.
func TestApprovalConflictAfterLostInvalidationInvalidates(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	e.wantPositions(t, "before the approval")
	if _, _, err := e.orders.ApproveOrder(as(e.risk1), o.ID); err != nil {
		t.Fatal(err)
	}
	wantReapprovalConflict(t, e.lossy, e.risk1, o.ID)
	e.wantPositions(t, "after the retried approval's 409", "2")
}

// Likewise a rejection (the summary's pending_orders) and a submission retried with its
// client_order_id (200 with the order that the killed replica committed).
func TestDecisionAndReplayAfterLostInvalidationInvalidate(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	e.wantPending(t, "before the rejection", 1)
	if _, err := e.orders.RejectOrder(as(e.risk1), o.ID, "no"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.lossy.RejectOrder(as(e.risk1), o.ID, "no"); trading.ErrorCode(err) != trading.ECONFLICT {
		t.Fatalf("the retried rejection: %v, want conflict", err)
	}
	e.wantPending(t, "after the retried rejection's 409", 0)

	n := newOrder("BTC/USD", trading.Buy, "1", "100", "retried")
	if _, _, err := e.orders.CreateOrder(as(e.trader1), n); err != nil {
		t.Fatal(err)
	}
	if _, created, err := e.lossy.CreateOrder(as(e.trader1), n); err != nil || created {
		t.Fatalf("the retried submission: created %v, %v, want the first order", created, err)
	}
	e.wantPending(t, "after the retried submission", 1)
}

// Likewise a submission whose retry arrives while the first is still committing: the retry's
// INSERT waits for the first's row, inserts nothing and answers 200 with that order. The
// replica of the first may die before its invalidation, as above; the retry's answer then
// came with a summary that did not count the order until it expired (10 s), where a retry
// that came a moment later (the replay above) dropped it. Here the first is a transaction of
// the test's own, which tells no cache.
func TestConcurrentReplayAfterLostInvalidationInvalidates(t *testing.T) {
	t.Parallel()
	e := newLossyEnv(t)
	e.wantPending(t, "before the submission", 0)
	ctx := context.Background()
	first, err := e.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := first.Exec(ctx, `INSERT INTO orders (id, client_order_id, symbol, side, quantity, price, requested_by)
		VALUES ($1, 'racing', 'BTC/USD', 'buy', 1, 100, $2)`, uuid.New(), e.trader1.ID); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		created bool
		err     error
	}
	retried := make(chan answer, 1)
	go func() {
		_, created, err := e.lossy.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "100", "racing"))
		retried <- answer{created, err}
	}()
	// The retry waits for the first's row lock before the first commits.
	for e.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-retried; a.err != nil || a.created {
		t.Fatalf("the retried submission: created %v, %v, want the first order", a.created, a.err)
	}
	e.wantPending(t, "after the retried submission's 200", 1)
}
