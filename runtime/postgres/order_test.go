package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

func TestCreateOrderAndIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := as(e.trader1)

	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1.5", "30000.12345678", "c-1"))
	if o.Status != trading.StatusPending || o.RequestedBy != e.trader1.ID || o.DecidedAt != nil ||
		o.ClientOrderID == nil || *o.ClientOrderID != "c-1" {
		t.Fatalf("created order = %+v", o)
	}
	eq(t, "quantity", o.Quantity.Decimal, "1.5")
	eq(t, "price", o.Price.Decimal, "30000.12345678")

	// Same body again (quantity written differently but equal): the first order, not created.
	again, created, err := e.orders.CreateOrder(ctx, newOrder("BTC/USD", trading.Buy, "1.50", "30000.12345678", "c-1"))
	if err != nil || created || again.ID != o.ID {
		t.Fatalf("retry = %v, created=%v, %v; want the first order", again, created, err)
	}
	// Reused id with a different body.
	_, _, err = e.orders.CreateOrder(ctx, newOrder("BTC/USD", trading.Buy, "2", "30000.12345678", "c-1"))
	wantCode(t, err, trading.ECONFLICT)
	_, _, err = e.orders.CreateOrder(ctx, newOrder("BTC/USD", trading.Sell, "1.5", "30000.12345678", "c-1"))
	wantCode(t, err, trading.ECONFLICT)
	// The same client order id from another user is another order.
	other := e.create(t, e.trader2, newOrder("BTC/USD", trading.Buy, "1.5", "30000.12345678", "c-1"))
	if other.ID == o.ID {
		t.Fatal("another user's client order id returned trader1's order")
	}
	// Orders without a client order id never collide.
	e.create(t, e.trader1, newOrder("ETH/USD", trading.Buy, "1", "10", ""))
	e.create(t, e.trader1, newOrder("ETH/USD", trading.Buy, "1", "10", ""))
	if n := e.count(t, `SELECT count(*) FROM orders WHERE requested_by = $1`, e.trader1.ID); n != 3 {
		t.Fatalf("trader1 has %d orders, want 3", n)
	}

	_, _, err = e.orders.CreateOrder(context.Background(), newOrder("BTC/USD", trading.Buy, "1", "1", ""))
	wantCode(t, err, trading.EUNAUTHORIZED)
}

func TestCreateOrderConcurrentRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	const n = 10
	var (
		wg      sync.WaitGroup
		created atomic.Int32
		ids     = make([]uuid.UUID, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			o, c, err := e.orders.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "100", "same-key"))
			errs[i] = err
			if err == nil {
				ids[i] = o.ID
				if c {
					created.Add(1)
				}
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("submission %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("submission %d got order %s, submission 0 got %s", i, ids[i], ids[0])
		}
	}
	if created.Load() != 1 {
		t.Errorf("%d submissions reported created, want 1", created.Load())
	}
	if c := e.count(t, `SELECT count(*) FROM orders`); c != 1 {
		t.Errorf("%d orders stored, want 1", c)
	}
}

func TestOrderVisibility(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))

	if got, err := e.orders.FindOrderByID(as(e.trader1), o.ID); err != nil || got.ID != o.ID {
		t.Fatalf("owner: %v, %v", got, err)
	}
	_, err := e.orders.FindOrderByID(as(e.trader2), o.ID)
	wantCode(t, err, trading.ENOTFOUND)
	_, err = e.orders.FindOrderByID(as(e.trader1), uuid.New())
	wantCode(t, err, trading.ENOTFOUND)
	for _, u := range []*trading.User{e.risk1, e.admin} {
		if got, err := e.orders.FindOrderByID(as(u), o.ID); err != nil || got.ID != o.ID {
			t.Fatalf("%s: %v, %v", u.Username, got, err)
		}
	}

	list, _, err := e.orders.FindOrders(as(e.trader2), trading.OrderFilter{})
	if err != nil || len(list) != 0 {
		t.Fatalf("trader2 lists %d orders (%v), want 0", len(list), err)
	}
	list, _, err = e.orders.FindOrders(as(e.risk1), trading.OrderFilter{})
	if err != nil || len(list) != 1 {
		t.Fatalf("risk1 lists %d orders (%v), want 1", len(list), err)
	}
	pending, err := e.orders.FindPendingOrders(as(e.trader2))
	if err != nil || len(pending) != 0 {
		t.Fatalf("trader2 pending = %d (%v), want 0", len(pending), err)
	}
	pending, err = e.orders.FindPendingOrders(as(e.risk1))
	if err != nil || len(pending) != 1 {
		t.Fatalf("risk1 pending = %d (%v), want 1", len(pending), err)
	}
	// trader2 cannot decide trader1's order (not a risk user), nor learn that it exists.
	_, _, err = e.orders.ApproveOrder(as(e.trader2), o.ID)
	wantCode(t, err, trading.EFORBIDDEN)
}

func TestFourEyes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	own := e.create(t, e.risk1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	_, _, err := e.orders.ApproveOrder(as(e.risk1), own.ID)
	wantCode(t, err, trading.EFORBIDDEN)
	_, err = e.orders.RejectOrder(as(e.risk1), own.ID, "mine")
	wantCode(t, err, trading.EFORBIDDEN)

	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	_, _, err = e.orders.ApproveOrder(as(e.trader1), o.ID)
	wantCode(t, err, trading.EFORBIDDEN)
	_, _, err = e.orders.ApproveOrder(as(e.trader2), o.ID)
	wantCode(t, err, trading.EFORBIDDEN)

	// Admin may decide risk1's order; it is someone else's.
	got, tr, err := e.orders.ApproveOrder(as(e.admin), own.ID)
	if err != nil || got.Status != trading.StatusApproved || got.DecidedBy == nil || *got.DecidedBy != e.admin.ID || tr == nil {
		t.Fatalf("admin approves risk1's order = %+v, %+v, %v", got, tr, err)
	}
	_, _, err = e.orders.ApproveOrder(as(e.risk1), uuid.New())
	wantCode(t, err, trading.ENOTFOUND)
}

func TestRejectThenApprove(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	got, err := e.orders.RejectOrder(as(e.risk1), o.ID, "too large")
	if err != nil || got.Status != trading.StatusRejected || got.DecisionReason == nil || *got.DecisionReason != "too large" ||
		got.DecidedAt == nil {
		t.Fatalf("reject = %+v, %v", got, err)
	}
	_, _, err = e.orders.ApproveOrder(as(e.risk1), o.ID)
	wantCode(t, err, trading.ECONFLICT)
	_, err = e.orders.RejectOrder(as(e.risk1), o.ID, "again")
	wantCode(t, err, trading.ECONFLICT)
	if n := e.count(t, `SELECT count(*) FROM trades`); n != 0 {
		t.Fatalf("%d trades after a rejection, want 0", n)
	}
}

// An approval that fails (refused, or the order gone) has opened a transaction and locked
// the requester's position; it rolls back on the same connection: no lock stays, no session
// idles in a transaction, and the pool keeps the connection instead of replacing it.
func TestFailedApprovalRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	first := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	if _, _, err := e.orders.ApproveOrder(as(e.risk1), first.ID); err != nil {
		t.Fatal(err)
	}
	rejected := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	if _, err := e.orders.RejectOrder(as(e.risk1), rejected.ID, "no"); err != nil {
		t.Fatal(err)
	}
	own := e.create(t, e.risk1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	newConns := e.db.Pool().Stat().NewConnsCount()
	for range 3 {
		_, _, err := e.orders.ApproveOrder(as(e.risk1), rejected.ID)
		wantCode(t, err, trading.ECONFLICT)
		_, _, err = e.orders.ApproveOrder(as(e.risk1), own.ID)
		wantCode(t, err, trading.EFORBIDDEN)
		_, _, err = e.orders.ApproveOrder(as(e.risk1), uuid.New())
		wantCode(t, err, trading.ENOTFOUND)
	}
	if n := e.count(t, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND state LIKE 'idle in transaction%'`); n != 0 {
		t.Fatalf("%d sessions idle in a transaction after failed approvals", n)
	}
	tx, err := e.db.Pool().Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	if _, err := tx.Exec(context.Background(), `SELECT 1 FROM positions WHERE user_id = $1 FOR UPDATE NOWAIT`, e.trader1.ID); err != nil {
		t.Fatalf("the position is still locked after failed approvals: %v", err)
	}
	if n := e.db.Pool().Stat().NewConnsCount() - newConns; n > 1 { // the Begin above may dial one
		t.Fatalf("the pool opened %d connections for 9 failed approvals: it had to drop the ones left in a transaction", n)
	}
}

// recordingInvalidator remembers whom it was told about.
type recordingInvalidator struct {
	mu      sync.Mutex
	users   []uuid.UUID
	views   []trading.Views
	symbols []string // the traded symbol of each call ("" for InvalidateUser)
}

func (r *recordingInvalidator) InvalidateUser(_ context.Context, id uuid.UUID, stale trading.Views) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users = append(r.users, id)
	r.views = append(r.views, stale)
	r.symbols = append(r.symbols, "")
	return nil
}

func (r *recordingInvalidator) InvalidateTrade(_ context.Context, id uuid.UUID, symbol string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users = append(r.users, id)
	r.views = append(r.views, trading.AllViews)
	r.symbols = append(r.symbols, symbol)
	return nil
}

func TestConcurrentApprovalsExactlyOnce(t *testing.T) {
	t.Parallel()
	inv := &recordingInvalidator{}
	e := newEnv(t, postgres.OrderServiceConfig{Invalidator: inv})
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "2", "100", ""))
	if len(inv.users) != 1 || inv.users[0] != e.trader1.ID || inv.views[0] != trading.ViewSummary {
		t.Fatalf("creating the order invalidated %v %v, want the requester's summary once (pending_orders; positions unchanged)", inv.users, inv.views)
	}
	inv.users, inv.views, inv.symbols = nil, nil, nil

	const n = 12
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		approver := e.risk1
		if i%2 == 1 {
			approver = e.admin
		}
		wg.Go(func() { _, _, errs[i] = e.orders.ApproveOrder(as(approver), o.ID) })
	}
	wg.Wait()
	ok, conflict := 0, 0
	for _, err := range errs {
		switch trading.ErrorCode(err) {
		case "":
			ok++
		case trading.ECONFLICT:
			conflict++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || conflict != n-1 {
		t.Fatalf("%d successes and %d conflicts, want 1 and %d", ok, conflict, n-1)
	}
	if c := e.count(t, `SELECT count(*) FROM trades WHERE order_id = $1`, o.ID); c != 1 {
		t.Fatalf("%d trades for the order, want 1", c)
	}
	views, err := e.portfolio.Positions(context.Background(), e.trader1.ID)
	if err != nil || len(views) != 1 {
		t.Fatalf("positions = %v, %v", views, err)
	}
	eq(t, "position quantity", views[0].Quantity.Decimal, "2")
	// The winner invalidates, and so does each 409: the order is already approved, and the
	// replica that approved it may have died before its own invalidation.
	if len(inv.users) != n {
		t.Errorf("the approvals invalidated %d times, want %d (the approval and each 409)", len(inv.users), n)
	}
	for i := range inv.users {
		if inv.users[i] != e.trader1.ID || inv.views[i] != trading.AllViews || inv.symbols[i] != "BTC/USD" {
			t.Errorf("the approvals invalidated %v %v %q, want only the requester's positions and summary and the BTC/USD mark",
				inv.users[i], inv.views[i], inv.symbols[i])
		}
	}
}

func TestFindOrdersKeysetPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	created := map[uuid.UUID]bool{}
	var last uuid.UUID
	for range 25 {
		o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
		created[o.ID] = true
		last = o.ID
	}
	e.create(t, e.trader2, newOrder("BTC/USD", trading.Buy, "1", "100", "")) // not trader1's

	seen := map[uuid.UUID]bool{}
	var sizes []int
	cursor := ""
	var prev *trading.Order
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("pagination does not end")
		}
		list, next, err := e.orders.FindOrders(as(e.trader1), trading.OrderFilter{Limit: 10, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(list))
		for _, o := range list {
			if !created[o.ID] {
				t.Fatalf("listed an order that is not trader1's: %s", o.ID)
			}
			if seen[o.ID] {
				t.Fatalf("order %s listed twice", o.ID)
			}
			seen[o.ID] = true
			if prev != nil && (o.CreatedAt.After(prev.CreatedAt) ||
				(o.CreatedAt.Equal(prev.CreatedAt) && o.ID.String() > prev.ID.String())) {
				t.Fatalf("not newest first: %s after %s", o.CreatedAt, prev.CreatedAt)
			}
			prev = o
		}
		if page == 0 && list[0].ID != last {
			t.Errorf("first order listed is not the newest")
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(sizes) != 3 || sizes[0] != 10 || sizes[1] != 10 || sizes[2] != 5 {
		t.Fatalf("page sizes %v, want [10 10 5]", sizes)
	}
	if len(seen) != 25 {
		t.Fatalf("%d distinct orders listed, want 25", len(seen))
	}

	// Filters.
	pending := trading.StatusPending
	sym := "ETH/USD"
	list, _, err := e.orders.FindOrders(as(e.risk1), trading.OrderFilter{Status: &pending, Limit: 500})
	if err != nil || len(list) != 26 {
		t.Fatalf("risk pending = %d (%v), want 26", len(list), err)
	}
	list, _, err = e.orders.FindOrders(as(e.risk1), trading.OrderFilter{Symbol: &sym})
	if err != nil || len(list) != 0 {
		t.Fatalf("ETH/USD orders = %d (%v), want 0", len(list), err)
	}

	for _, bad := range []string{"!!", "bm90LWEtY3Vyc29y", "MjAyNi0wMS0wMVQwMDowMDowMFp8bm90LWEtdXVpZA"} {
		_, _, err = e.orders.FindOrders(as(e.trader1), trading.OrderFilter{Cursor: bad})
		wantField(t, err, "cursor")
	}
	for _, limit := range []int{-1, 501} {
		_, _, err = e.orders.FindOrders(as(e.trader1), trading.OrderFilter{Limit: limit})
		wantField(t, err, "limit")
	}
	list, _, err = e.orders.FindOrders(as(e.trader1), trading.OrderFilter{})
	if err != nil || len(list) != 25 {
		t.Fatalf("default limit lists %d (%v), want 25 (default 50)", len(list), err)
	}
}

func TestDailyLossLimit(t *testing.T) {
	t.Parallel()
	limit := dec("1000")
	e := newEnv(t, postgres.OrderServiceConfig{MaxDailyLoss: &limit})
	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "100", "150")
	e.trade(t, e.trader1, trading.Sell, "BTC/USD", "50", "140") // -500: still allowed
	e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "1", "keep"))
	e.trade(t, e.trader1, trading.Sell, "BTC/USD", "50", "140") // -1000 in total: the limit

	_, _, err := e.orders.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	wantField(t, err, "daily_loss")
	// A retry of an order that already exists creates nothing and is still answered.
	if _, created, err := e.orders.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "1", "keep")); err != nil || created {
		t.Fatalf("retry after the limit = created %v, %v", created, err)
	}
	// Other users are not limited.
	e.create(t, e.trader2, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
}

// TestUnavailableDatabase: a database that cannot be reached, and one whose server refuses
// the connection with a FATAL error (here: the database does not exist, as after a DROP
// DATABASE; a revoked login is the same case), make every call EUNAVAILABLE (503), not
// EINTERNAL.
func TestUnavailableDatabase(t *testing.T) {
	t.Parallel()
	missing, err := url.Parse(pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	missing.Path = "/t_missing_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	for name, dsn := range map[string]string{
		"closed port":      "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable",
		"missing database": missing.String(),
	} {
		t.Run(name, func(t *testing.T) {
			db, err := postgres.Open(context.Background(), postgres.Config{URL: dsn})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			p := &trading.User{ID: uuid.New(), Username: "x", Roles: []trading.Role{trading.RoleRisk}}
			orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{})
			_, _, err = orders.CreateOrder(as(p), newOrder("BTC/USD", trading.Buy, "1", "1", ""))
			wantCode(t, err, trading.EUNAVAILABLE)
			_, _, err = orders.FindOrders(as(p), trading.OrderFilter{})
			wantCode(t, err, trading.EUNAVAILABLE)
			_, _, err = orders.ApproveOrder(as(p), uuid.New())
			wantCode(t, err, trading.EUNAVAILABLE)
			_, err = postgres.NewUserService(db).Authenticate(context.Background(), "x", "y")
			wantCode(t, err, trading.EUNAVAILABLE)
			_, err = postgres.NewPortfolioService(db).Summary(context.Background(), p.ID)
			wantCode(t, err, trading.EUNAVAILABLE)
			_, err = postgres.NewSessionService(db).SessionActive(context.Background(), uuid.New())
			wantCode(t, err, trading.EUNAVAILABLE)
			_, _, err = postgres.NewSessionService(db).RotateRefreshToken(context.Background(), []byte("a"), []byte("b"), time.Now())
			wantCode(t, err, trading.EUNAVAILABLE)
			if err := db.Ping(context.Background()); trading.ErrorCode(err) != trading.EUNAVAILABLE {
				t.Errorf("Ping = %v, want EUNAVAILABLE", err)
			}
		})
	}
}

// TestQueryTimeoutBoundsCalls: a database that does not answer (here: a row lock held by
// another transaction) makes a call fail with EUNAVAILABLE instead of hanging.
func TestQueryTimeoutBoundsCalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))

	ctx := context.Background()
	tx, err := e.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT id FROM orders WHERE id = $1 FOR UPDATE`, o.ID); err != nil {
		t.Fatal(err)
	}

	dsn := e.db.Pool().Config().ConnString()
	short, err := postgres.Open(ctx, postgres.Config{URL: dsn, QueryTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(short.Close)
	_, _, err = postgres.NewOrderService(short, postgres.OrderServiceConfig{}).ApproveOrder(as(e.risk1), o.ID)
	wantCode(t, err, trading.EUNAVAILABLE)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The lock is gone: the order is still pending and can be approved.
	if _, _, err := e.orders.ApproveOrder(as(e.risk1), o.ID); err != nil {
		t.Fatalf("approve after the lock is released: %v", err)
	}
}

func TestFindOrdersRejectsUnknownStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	bad := trading.OrderStatus("executed")
	_, _, err := e.orders.FindOrders(as(e.risk1), trading.OrderFilter{Status: &bad})
	wantField(t, err, "status")
	_, err = e.sessions.CreateSession(context.Background(), uuid.New(), []trading.Role{trading.RoleTrader}, []byte("h"), time.Now().Add(time.Hour))
	wantCode(t, err, trading.ENOTFOUND)
}

// TestRecoversAfterConnectionsAreKilled: when the server drops every connection (a restart, a
// failover), calls fail as EUNAVAILABLE at worst, never EINTERNAL, and the pool recovers by
// itself.
func TestRecoversAfterConnectionsAreKilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := as(e.trader1)
	e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))

	// Warm several pooled connections, then kill every backend of the database from outside.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { _, _, _ = e.orders.FindOrders(ctx, trading.OrderFilter{}) })
	}
	wg.Wait()
	admin, err := pgx.Connect(context.Background(), pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var dbName string
	if err := e.db.Pool().QueryRow(context.Background(), `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	var killed int
	if err := admin.QueryRow(context.Background(), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1`, dbName).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no backend was terminated")
	}

	// At most the first call sees a dead connection; it resets the pool, so the next one works.
	for i := range 2 {
		_, _, err := e.orders.FindOrders(ctx, trading.OrderFilter{})
		if err == nil {
			break
		}
		if i == 1 {
			t.Fatalf("second call after the kill still fails: %v", err)
		}
		wantCode(t, err, trading.EUNAVAILABLE)
	}
	if err := e.db.Ping(context.Background()); err != nil {
		t.Fatalf("ping after recovery: %v", err)
	}
}

type failingInvalidator struct{ calls atomic.Int32 }

func (f *failingInvalidator) InvalidateUser(context.Context, uuid.UUID, trading.Views) error {
	f.calls.Add(1)
	return errors.New("redis is down")
}

func (f *failingInvalidator) InvalidateTrade(context.Context, uuid.UUID, string) error {
	f.calls.Add(1)
	return errors.New("redis is down")
}

// TestApproveWithFailingInvalidator: the trade is committed before the invalidation, so a
// failed invalidation is logged and the approval still reports success (see ApproveOrder).
func TestApproveWithFailingInvalidator(t *testing.T) {
	t.Parallel()
	inv := &failingInvalidator{}
	e := newEnv(t, postgres.OrderServiceConfig{Invalidator: inv, Logger: slog.New(slog.DiscardHandler)})
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", "")) // its invalidation fails too
	got, tr, err := e.orders.ApproveOrder(as(e.risk1), o.ID)
	if err != nil || got.Status != trading.StatusApproved || tr == nil {
		t.Fatalf("approve = %v, %v, %v", got, tr, err)
	}
	if inv.calls.Load() != 2 {
		t.Fatalf("invalidator called %d times, want 2 (create and approve)", inv.calls.Load())
	}
}

func TestCreateOrderGuardsUnvalidatedInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	_, _, err := e.orders.CreateOrder(as(e.trader1), trading.NewOrder{Symbol: "BTC/USD", Side: "hold", Quantity: dec("-1"), Price: dec("0")})
	for _, f := range []string{"side", "quantity", "price"} {
		wantField(t, err, f)
	}
}

// The pending queue is listed whole, oldest first: a desk behind on its approvals sees every
// order waiting, not the first thousand.
func TestPendingOrdersAreListedWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	const n = 1205
	if _, err := e.db.Pool().Exec(context.Background(), `
		INSERT INTO orders (id, requested_by, symbol, side, quantity, price, status, created_at, updated_at)
		SELECT gen_random_uuid(), $1, 'BTC/USD', 'buy', 1, 100, 'pending', now() - make_interval(secs => i), now()
		FROM generate_series(1, $2) AS i`, e.trader1.ID, n); err != nil {
		t.Fatal(err)
	}
	pending, err := e.orders.FindPendingOrders(as(e.risk1))
	if err != nil || len(pending) != n {
		t.Fatalf("risk1 sees %d pending orders (%v), want %d", len(pending), err, n)
	}
	for i := 1; i < len(pending); i++ {
		if pending[i].CreatedAt.Before(pending[i-1].CreatedAt) {
			t.Fatalf("pending order %d is older than the one before it", i)
		}
	}
}

// TestDailyFiguresFollowTheUTCDay: the daily loss limit, daily_realized_pnl and trades_today
// count the trades of the current UTC day (api.md), whatever the time zone of the database
// sessions. The sessions here run 11 hours behind UTC, so that the session's day and the UTC
// day differ at any hour the test runs: before 11:00 UTC the session's midnight is 11:00 UTC
// yesterday (a day that counted it would count trader1's loss of yesterday), after it 11:00
// UTC today (trader2's loss of today would not count).
func TestDailyFiguresFollowTheUTCDay(t *testing.T) {
	t.Parallel()
	// The scenario reads the clock of the database: when the UTC day ends while it runs, its
	// "today" and "yesterday" are not those of the checks, and it runs once more.
	for attempt := 0; ; attempt++ {
		if dailyFiguresScenario(t) || attempt == 1 {
			return
		}
	}
}

// dailyFiguresScenario runs TestDailyFiguresFollowTheUTCDay's checks on a database of its
// own and reports false, without failing, when the UTC day changed during them.
func dailyFiguresScenario(t *testing.T) bool {
	ctx := context.Background()
	limit := dec("100")
	e := newEnv(t, postgres.OrderServiceConfig{MaxDailyLoss: &limit})
	pool := e.db.Pool()
	day := func() (d time.Time) {
		if err := pool.QueryRow(ctx, `SELECT date_trunc('day', now(), 'UTC')`).Scan(&d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	var name string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ALTER DATABASE "`+name+`" SET TimeZone = 'Pacific/Pago_Pago'`); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // the next connections start in that zone
	var zone string
	if err := pool.QueryRow(ctx, `SHOW TimeZone`).Scan(&zone); err != nil || zone != "Pacific/Pago_Pago" {
		t.Fatalf("session time zone %q (%v), want Pacific/Pago_Pago", zone, err)
	}
	start := day()

	// trader1 lost 200 in the last microsecond of yesterday (UTC), trader2 100 in the first
	// of today.
	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "10", "100")
	e.trade(t, e.trader1, trading.Sell, "BTC/USD", "10", "80")
	e.trade(t, e.trader2, trading.Buy, "ETH/USD", "10", "100")
	e.trade(t, e.trader2, trading.Sell, "ETH/USD", "10", "90")
	for user, at := range map[*trading.User]string{
		e.trader1: `date_trunc('day', now(), 'UTC') - interval '1 microsecond'`,
		e.trader2: `date_trunc('day', now(), 'UTC')`,
	} {
		if _, err := pool.Exec(ctx, `UPDATE trades SET executed_at = `+at+` WHERE user_id = $1`, user.ID); err != nil {
			t.Fatal(err)
		}
	}

	// Yesterday's loss does not stop trader1 today, nor count in today's figures.
	_, _, err1 := e.orders.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "1", ""))
	s1, serr1 := e.portfolio.Summary(ctx, e.trader1.ID)
	// Today's loss of 100 (at the limit) stops trader2.
	_, _, err2 := e.orders.CreateOrder(as(e.trader2), newOrder("ETH/USD", trading.Buy, "1", "1", ""))
	s2, serr2 := e.portfolio.Summary(ctx, e.trader2.ID)
	if !day().Equal(start) {
		t.Logf("the UTC day ended during the scenario (%s): once more", start.Format(time.DateOnly))
		return false
	}
	if serr1 != nil || serr2 != nil {
		t.Fatalf("summaries: %v, %v", serr1, serr2)
	}
	if err1 != nil {
		t.Errorf("trader1's order after a loss of yesterday: %v, want it accepted", err1)
	}
	eq(t, "trader1 daily_realized_pnl", s1.DailyRealizedPnL.Decimal, "0")
	eq(t, "trader1 realized_pnl", s1.RealizedPnL.Decimal, "-200")
	if s1.TradesToday != 0 {
		t.Errorf("trader1 trades_today = %d, want 0 (both trades were yesterday)", s1.TradesToday)
	}
	wantField(t, err2, "daily_loss")
	eq(t, "trader2 daily_realized_pnl", s2.DailyRealizedPnL.Decimal, "-100")
	if s2.TradesToday != 2 {
		t.Errorf("trader2 trades_today = %d, want 2", s2.TradesToday)
	}
	return true
}

// TestFindOrdersPagesWhileOrdersArrive: a walk through the pages while new orders arrive
// (a risk desk paging through the book during trading) lists every order that existed once,
// in order, none twice: the cursor is a position in (created_at, id), not an offset.
func TestFindOrdersPagesWhileOrdersArrive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	existing := map[uuid.UUID]bool{}
	for range 12 {
		existing[e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", "")).ID] = true
	}
	seen := map[uuid.UUID]bool{}
	var prev *trading.Order
	cursor := ""
	for page := 0; ; page++ {
		if page > 12 {
			t.Fatal("pagination does not end")
		}
		list, next, err := e.orders.FindOrders(as(e.risk1), trading.OrderFilter{Limit: 5, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range list {
			if seen[o.ID] {
				t.Fatalf("page %d: order %s listed twice", page, o.ID)
			}
			seen[o.ID] = true
			if prev != nil && (o.CreatedAt.After(prev.CreatedAt) ||
				(o.CreatedAt.Equal(prev.CreatedAt) && o.ID.String() > prev.ID.String())) {
				t.Fatalf("page %d: not newest first: %s (%s) after %s (%s)", page, o.ID, o.CreatedAt, prev.ID, prev.CreatedAt)
			}
			prev = o
		}
		// New orders arrive between the pages, by another trader and by the same one.
		e.create(t, e.trader2, newOrder("ETH/USD", trading.Sell, "1", "200", ""))
		e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
		if next == "" {
			break
		}
		cursor = next
	}
	for id := range existing {
		if !seen[id] {
			t.Errorf("order %s, there before the walk began, was never listed", id)
		}
	}
}
