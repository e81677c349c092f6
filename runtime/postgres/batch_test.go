package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// sqlTracer counts the statements whose SQL contains match, and the statements PostgreSQL
// aborted to break a deadlock; pgx traces pipelines (pgx.Batch) apart from single queries.
type sqlTracer struct {
	match        string
	n, deadlocks atomic.Int64
}

func (c *sqlTracer) seen(sql string) {
	if c.match != "" && strings.Contains(sql, c.match) {
		c.n.Add(1)
	}
}

func (c *sqlTracer) ended(err error) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
		c.deadlocks.Add(1)
	}
}

func (c *sqlTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.seen(d.SQL)
	return ctx
}
func (c *sqlTracer) TraceQueryEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	c.ended(d.Err)
}
func (c *sqlTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (c *sqlTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.seen(d.SQL)
	c.ended(d.Err)
}
func (c *sqlTracer) TraceBatchEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	c.ended(d.Err)
}

// newTracedEnv is an env on a database of its own (dsn: pgtest's, and any options) whose
// statements tracer sees, with the services and users of newEnv.
func newTracedEnv(t *testing.T, dsn string, tracer *sqlTracer) *env {
	t.Helper()
	db, err := postgres.Open(context.Background(), postgres.Config{URL: dsn, MinConns: 1, Tracer: tracer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	e := &env{db: db, users: postgres.NewUserService(db), orders: postgres.NewOrderService(db, postgres.OrderServiceConfig{}),
		portfolio: postgres.NewPortfolioService(db)}
	e.trader1, e.trader2 = e.addUser(t, "trader1", trading.RoleTrader), e.addUser(t, "trader2", trading.RoleTrader)
	e.risk1, e.admin = e.addUser(t, "risk1", trading.RoleRisk), e.addUser(t, "admin", trading.RoleAdmin)
	return e
}

// Concurrent submissions share INSERT statements (batches), and every submitter gets exactly
// its own order back: its user, symbol, side, quantity, price and client order id, stored
// once. A mix-up of rows between the callers of one batch would fail here.
func TestConcurrentSubmissionsAreBatched(t *testing.T) {
	t.Parallel()
	inserts := &sqlTracer{match: "INSERT INTO orders"}
	e := newTracedEnv(t, pgtest.NewMigratedDatabase(t), inserts)
	users := []*trading.User{e.trader1, e.trader2, e.addUser(t, "t3", trading.RoleTrader), e.addUser(t, "t4", trading.RoleTrader)}
	symbols := []string{"BTC/USD", "ETH/USD", "XRP/USD"}

	const goroutines, each = 48, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			u := users[g%len(users)]
			for i := range each {
				side := trading.Buy
				if i%2 == 1 {
					side = trading.Sell
				}
				clientID := ""
				if i%3 == 0 {
					clientID = fmt.Sprintf("g%d-%d", g, i)
				}
				n := newOrder(symbols[(g+i)%len(symbols)], side, fmt.Sprintf("%d.5", g+1), fmt.Sprintf("%d.25", i+1), clientID)
				o, created, err := e.orders.CreateOrder(as(u), n)
				switch {
				case err != nil:
					errs <- fmt.Errorf("goroutine %d order %d: %w", g, i, err)
					return
				case !created || o.RequestedBy != u.ID || o.Symbol != n.Symbol || o.Side != n.Side ||
					!o.Quantity.Equal(n.Quantity) || !o.Price.Equal(n.Price) || o.ClientOrderID == nil != (clientID == "") ||
					o.ClientOrderID != nil && *o.ClientOrderID != clientID || o.Status != trading.StatusPending:
					errs <- fmt.Errorf("goroutine %d order %d: submitted %+v as %s, got %+v (created %v)", g, i, n, u.Username, o, created)
					return
				}
				stored, err := e.orders.FindOrderByID(as(u), o.ID)
				if err != nil || !stored.Quantity.Equal(n.Quantity) || !stored.Price.Equal(n.Price) || stored.Symbol != n.Symbol {
					errs <- fmt.Errorf("goroutine %d order %d: stored %+v, %v", g, i, stored, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if c := e.count(t, `SELECT count(*) FROM orders`); c != goroutines*each {
		t.Fatalf("%d orders stored, want %d", c, goroutines*each)
	}
	if n := inserts.n.Load(); n >= goroutines*each {
		t.Errorf("%d INSERT statements for %d concurrent submissions: none were batched", n, goroutines*each)
	} else {
		t.Logf("%d submissions in %d INSERT statements", goroutines*each, n)
	}
}

// One bad order in a batch (here a user that does not exist: a token that outlived its
// user) fails only its own submission; the others of the batch are stored. And two orders of
// one batch with the same client order id store one order: the second is answered as taken.
func TestInsertBatchIsolatesEachOrder(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	ctx := context.Background()
	user := e.trader1.ID
	key := "k-1"
	order := func(userID uuid.UUID, clientOrderID *string) postgres.OrderInsert {
		return postgres.OrderInsert{ID: uuid.New(), UserID: userID, ClientOrderID: clientOrderID,
			Order: newOrder("BTC/USD", trading.Buy, "2", "3", "")}
	}

	batch := []postgres.OrderInsert{order(user, nil), order(uuid.New(), nil), order(user, &key), order(user, &key)}
	out, err := e.orders.InsertOrders(ctx, batch, false)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	if out[0].Err != nil || out[0].Order == nil || out[0].Order.ID != batch[0].ID || out[0].Order.RequestedBy != user {
		t.Errorf("good order: %+v", out[0])
	}
	var pgErr *pgconn.PgError
	if !errors.As(out[1].Err, &pgErr) || pgErr.Code != "23503" {
		t.Errorf("order of an unknown user: %+v, want its foreign key violation", out[1])
	}
	if out[2].Err != nil || out[2].Order == nil || out[2].Order.ID != batch[2].ID {
		t.Errorf("first order with the key: %+v", out[2])
	}
	if out[3].Err != nil || out[3].Order != nil {
		t.Errorf("second order with the key: %+v, want taken (no order, no error)", out[3])
	}
	if n := e.count(t, `SELECT count(*) FROM orders`); n != 2 {
		t.Fatalf("%d orders stored, want 2", n)
	}

	// The batch's single statement gives the same answers when no order is bad.
	key2 := "k-2"
	batch = []postgres.OrderInsert{order(user, &key2), order(user, &key2), order(user, nil)}
	out, err = e.orders.InsertOrders(ctx, batch, true)
	if err != nil || out[0].Order == nil || out[1].Order != nil || out[2].Order == nil || out[2].Order.ID != batch[2].ID {
		t.Fatalf("batch without a bad order: %+v, %v", out, err)
	}
}

// principalOf is u as an approver.
func principalOf(u *trading.User) trading.Principal {
	return trading.Principal{UserID: u.ID, Username: u.Username, Roles: u.Roles}
}

// replay is the position the trades give applied one after the other from flat.
func replay(trades []*trading.Trade) trading.Position {
	var p trading.Position
	for _, tr := range trades {
		next, realized := trading.ApplyTrade(p, tr.Side, tr.Quantity.Decimal, tr.Price.Decimal)
		next.RealizedPnL = p.RealizedPnL.Add(realized.Round(trading.Scale))
		p = next
	}
	return p
}

// A batch of approvals answers each approval as a single approval would: the orders that may
// be approved are, with one trade each and their position moved by every one of them in
// decision order (here three trades of one position in one transaction, crossing zero);
// the approver's own order is 403, an unknown order 404, an order already decided and a
// second approval of an order in the same batch 409.
func TestApproveBatchAnswersEachApproval(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	ctx := context.Background()
	buy1 := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "100", "150", ""))
	buy2 := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "100", "160", ""))
	sell := e.create(t, e.trader1, newOrder("BTC/USD", trading.Sell, "300", "170", ""))
	other := e.create(t, e.trader2, newOrder("ETH/USD", trading.Sell, "2", "3000", ""))
	own := e.create(t, e.risk1, newOrder("BTC/USD", trading.Buy, "1", "1", ""))
	done := e.create(t, e.trader2, newOrder("BTC/USD", trading.Buy, "1", "1", ""))
	if _, err := e.orders.RejectOrder(as(e.admin), done.ID, "no"); err != nil {
		t.Fatal(err)
	}
	risk, admin := principalOf(e.risk1), principalOf(e.admin)
	out, err := e.orders.ApproveBatch(ctx, []postgres.Approval{
		{buy1.ID, risk}, {own.ID, risk}, {buy2.ID, admin}, {uuid.New(), risk}, {other.ID, risk},
		{done.ID, risk}, {buy1.ID, admin}, {sell.ID, risk},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantOK := map[int]*trading.Order{0: buy1, 2: buy2, 4: other, 7: sell}
	wantErr := map[int]string{1: trading.EFORBIDDEN, 3: trading.ENOTFOUND, 5: trading.ECONFLICT, 6: trading.ECONFLICT}
	for i, r := range out {
		if o, ok := wantOK[i]; ok {
			if r.Err != nil || r.Order == nil || r.Order.ID != o.ID || r.Order.Status != trading.StatusApproved ||
				r.Trade == nil || r.Trade.OrderID != o.ID || r.Trade.ID == uuid.Nil || r.Trade.ExecutedAt.IsZero() {
				t.Errorf("approval %d: %+v, want order %s approved with its trade", i, r, o.ID)
			}
			continue
		}
		if r.Err == nil || trading.ErrorCode(r.Err) != wantErr[i] {
			t.Errorf("approval %d: %+v, want %s", i, r, wantErr[i])
		}
	}

	trades, _, err := e.portfolio.FindTrades(as(e.trader1), trading.TradeFilter{})
	if err != nil || len(trades) != 3 {
		t.Fatalf("trader1's trades: %v, %v", trades, err)
	}
	// What the approvals answered is what was stored: the trades' ids and execution times,
	// and one instant for each order's decided_at and updated_at.
	for _, i := range []int{0, 2, 7} {
		r := out[i]
		stored, err := e.orders.FindOrderByID(as(e.admin), r.Order.ID)
		if err != nil || !stored.DecidedAt.Equal(*r.Order.DecidedAt) || !stored.UpdatedAt.Equal(*stored.DecidedAt) ||
			!r.Order.UpdatedAt.Equal(*r.Order.DecidedAt) || !r.Trade.ExecutedAt.Equal(*r.Order.DecidedAt) {
			t.Errorf("approval %d: answered %+v / trade %+v, stored %+v (%v)", i, r.Order, r.Trade, stored, err)
		}
		var found bool
		for _, tr := range trades {
			if tr.ID == r.Trade.ID {
				found = tr.OrderID == r.Order.ID && tr.ExecutedAt.Equal(r.Trade.ExecutedAt) && tr.RealizedPnL.Equal(r.Trade.RealizedPnL.Decimal)
			}
		}
		if !found {
			t.Errorf("approval %d answered trade %+v, which is not stored as such", i, r.Trade)
		}
	}
	slices.Reverse(trades) // oldest first
	if trades[0].OrderID != buy1.ID || trades[1].OrderID != buy2.ID || trades[2].OrderID != sell.ID {
		t.Fatalf("trades in the order %s %s %s, want the batch's decision order", trades[0].OrderID, trades[1].OrderID, trades[2].OrderID)
	}
	want := replay(trades)
	eq(t, "quantity", want.Quantity, "-100")
	eq(t, "avg entry", want.AvgEntryPrice, "170")
	eq(t, "realized", want.RealizedPnL, "3000")
	eq(t, "realized of the sell", trades[2].RealizedPnL.Decimal, "3000")
	views, err := e.portfolio.Positions(ctx, e.trader1.ID)
	if err != nil || len(views) != 1 {
		t.Fatalf("positions: %v, %v", views, err)
	}
	eq(t, "stored quantity", views[0].Quantity.Decimal, "-100")
	eq(t, "stored avg entry", views[0].AvgEntryPrice.Decimal, "170")
	eq(t, "stored realized", views[0].RealizedPnL.Decimal, "3000")
	if !views[0].UpdatedAt.Equal(out[7].Trade.ExecutedAt) {
		t.Errorf("position updated at %s, want its last trade's execution %s", views[0].UpdatedAt, out[7].Trade.ExecutedAt)
	}
}

// A decider whose user was deleted since its token was issued gets 401, as a requester does;
// one whose roles changed since (risk to trader) gets 403 at once: the token's roles are
// trusted for reading, but a decision checks the user's roles in the database (the ended
// login is only noticed after the session check's TTL). Both for an approval alone, in a
// batch (whose other approvals go through) and for a rejection, and nothing moves.
func TestDeciderNoLongerAllowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, change, code string
	}{
		{"deleted", `DELETE FROM users WHERE id = $1`, trading.EUNAUTHORIZED},
		{"demoted", `UPDATE users SET roles = '{trader}' WHERE id = $1`, trading.EFORBIDDEN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnvTB(t)
			decider := e.addUser(t, "decider", trading.RoleRisk)
			if _, err := e.db.Pool().Exec(context.Background(), tc.change, decider.ID); err != nil {
				t.Fatal(err)
			}
			o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "1", ""))
			_, _, err := e.orders.ApproveOrder(as(decider), o.ID)
			wantCode(t, err, tc.code)
			_, err = e.orders.RejectOrder(as(decider), o.ID, "no longer allowed")
			wantCode(t, err, tc.code)

			other := e.create(t, e.trader2, newOrder("BTC/USD", trading.Buy, "1", "1", ""))
			out, err := e.orders.ApproveBatch(context.Background(), []postgres.Approval{
				{OrderID: o.ID, Approver: principalOf(decider)}, {OrderID: other.ID, Approver: principalOf(e.risk1)}})
			if err != nil {
				t.Fatal(err)
			}
			if trading.ErrorCode(out[0].Err) != tc.code || out[1].Err != nil || out[1].Trade == nil {
				t.Fatalf("batch with that approver: %+v, want its approval refused (%s) and the other executed", out, tc.code)
			}
			if n := e.count(t, `SELECT count(*) FROM orders WHERE id = $1 AND status = 'pending'`, o.ID); n != 1 {
				t.Fatal("the order is no longer pending")
			}
			if n := e.count(t, `SELECT count(*) FROM positions WHERE user_id = $1`, e.trader1.ID); n != 0 {
				t.Fatal("the refused approval moved (or made) the requester's position")
			}
		})
	}
}

// Concurrent approvals of many orders on a few positions (buys and sells, crossing zero)
// share transactions, and nothing is lost or applied twice: every approval succeeds with its
// own order's trade, and every position holds exactly the sum of its trades' quantities and
// realized P&L.
func TestConcurrentApprovalsAreBatched(t *testing.T) {
	t.Parallel()
	decisions := &sqlTracer{match: "UPDATE orders SET status = 'approved'"} // one per transaction
	e := newTracedEnv(t, pgtest.NewMigratedDatabase(t), decisions)
	traders := []*trading.User{e.trader1, e.trader2, e.addUser(t, "t3", trading.RoleTrader)}
	approvers := []*trading.User{e.risk1, e.admin}
	symbols := []string{"BTC/USD", "ETH/USD"}
	var orders []*trading.Order
	for i := range 240 {
		side := trading.Buy
		if i%3 == 2 {
			side = trading.Sell
		}
		orders = append(orders, e.create(t, traders[i%3], newOrder(symbols[i/3%2], side, fmt.Sprintf("%d", 1+i%7), fmt.Sprintf("%d.5", 100+i%11), "")))
	}

	next := make(chan *trading.Order, len(orders))
	for _, o := range orders {
		next <- o
	}
	close(next)
	var wg sync.WaitGroup
	errs := make(chan error, len(orders))
	for g := range 32 {
		wg.Go(func() {
			for o := range next {
				got, tr, err := e.orders.ApproveOrder(as(approvers[g%2]), o.ID)
				if err != nil || got.ID != o.ID || got.Status != trading.StatusApproved || tr.OrderID != o.ID ||
					!tr.Quantity.Equal(o.Quantity.Decimal) || !tr.Price.Equal(o.Price.Decimal) || tr.Side != o.Side {
					errs <- fmt.Errorf("approve %s: %+v %+v %v", o.ID, got, tr, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM trades`); n != len(orders) {
		t.Fatalf("%d trades for %d approved orders", n, len(orders))
	}
	if n := e.count(t, `SELECT count(*) FROM positions p WHERE quantity <> (
			SELECT sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) FROM trades t WHERE t.user_id = p.user_id AND t.symbol = p.symbol)
		OR realized_pnl <> (SELECT sum(realized_pnl) FROM trades t WHERE t.user_id = p.user_id AND t.symbol = p.symbol)`); n != 0 {
		t.Fatalf("%d positions differ from the sum of their trades", n)
	}
	if n := e.count(t, `SELECT count(*) FROM positions`); n != 6 {
		t.Fatalf("%d positions, want 6", n)
	}
	// Each position is its trades applied one after the other in execution order: the
	// average entry price and every trade's realized P&L depend on that order.
	for _, u := range traders {
		views, err := e.portfolio.Positions(context.Background(), u.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range views {
			all, err := e.allTrades(u, v.Symbol)
			if err != nil {
				t.Fatal(err)
			}
			var p trading.Position
			for _, tr := range all {
				next, realized := trading.ApplyTrade(p, tr.Side, tr.Quantity.Decimal, tr.Price.Decimal)
				next.RealizedPnL = p.RealizedPnL.Add(realized.Round(trading.Scale))
				if !realized.Round(trading.Scale).Equal(tr.RealizedPnL.Decimal) {
					t.Fatalf("%s %s: trade %s realized %s, the replay in execution order %s", u.Username, v.Symbol, tr.ID, tr.RealizedPnL.Decimal, realized)
				}
				p = next
			}
			if !p.Quantity.Equal(v.Quantity.Decimal) || !p.AvgEntryPrice.Equal(v.AvgEntryPrice.Decimal) || !p.RealizedPnL.Equal(v.RealizedPnL.Decimal) {
				t.Fatalf("%s %s: position %s @ %s realized %s, the replay of its trades %s @ %s realized %s", u.Username, v.Symbol,
					v.Quantity.Decimal, v.AvgEntryPrice.Decimal, v.RealizedPnL.Decimal, p.Quantity, p.AvgEntryPrice, p.RealizedPnL)
			}
		}
	}
	if n := decisions.n.Load(); n >= int64(len(orders)) {
		t.Errorf("%d decision statements for %d concurrent approvals: none were batched", n, len(orders))
	}
	t.Logf("%d approvals in %d transactions", len(orders), decisions.n.Load())
}

// Two replicas approving the same orders in batches, in opposite orders (retries that reached
// both): no 503 and no deadlock; each order is approved exactly once, the other approval of it
// is 409. The planner is told to prefer nested loops, as on a large orders table, so that the
// statements visit the orders in each batch's array order; PostgreSQL's deadlocks are
// counted. (The batches also share positions, which alone serializes them: this checks the
// outcome of the race, not each of the lock orders that prevent a cycle.)
func TestBatchesSharingOrdersDoNotDeadlock(t *testing.T) {
	t.Parallel()
	tracer := &sqlTracer{}
	e := newTracedEnv(t, pgtest.NewMigratedDatabase(t)+"&options="+
		strings.ReplaceAll(url.QueryEscape("-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"), "+", "%20"), tracer)
	other := postgres.NewOrderService(e.db, postgres.OrderServiceConfig{}) // a second replica
	risk, admin := principalOf(e.risk1), principalOf(e.admin)
	for round := range 10 {
		var forward, backward []postgres.Approval
		for i := range 20 {
			u := []*trading.User{e.trader1, e.trader2}[i%2]
			o := e.create(t, u, newOrder("BTC/USD", trading.Buy, "1", fmt.Sprintf("%d", 100+i), ""))
			forward = append(forward, postgres.Approval{OrderID: o.ID, Approver: risk})
		}
		for i := range forward {
			backward = append(backward, postgres.Approval{OrderID: forward[len(forward)-1-i].OrderID, Approver: admin})
		}
		var outs [2][]postgres.Approved
		var errs [2]error
		var wg sync.WaitGroup
		wg.Go(func() { outs[0], errs[0] = e.orders.ApproveBatch(context.Background(), forward) })
		wg.Go(func() { outs[1], errs[1] = other.ApproveBatch(context.Background(), backward) })
		wg.Wait()
		wins := map[uuid.UUID]int{}
		for k, batch := range [][]postgres.Approval{forward, backward} {
			if errs[k] != nil {
				t.Fatalf("round %d: batch %d failed: %v", round, k, errs[k])
			}
			for i, r := range outs[k] {
				switch {
				case r.Err == nil:
					wins[batch[i].OrderID]++
				case trading.ErrorCode(r.Err) != trading.ECONFLICT:
					t.Fatalf("round %d: approval of %s: %v, want success or 409", round, batch[i].OrderID, r.Err)
				}
			}
		}
		for _, a := range forward {
			if wins[a.OrderID] != 1 {
				t.Fatalf("round %d: order %s approved %d times", round, a.OrderID, wins[a.OrderID])
			}
		}
	}
	if n := e.count(t, `SELECT count(*) FROM trades`); n != 200 {
		t.Fatalf("%d trades for 200 orders", n)
	}
	if n := tracer.deadlocks.Load(); n != 0 {
		t.Fatalf("%d deadlocks between the batches (each cost a second and a retry of the whole batch)", n)
	}
}

// A position locked by a stuck transaction elsewhere (a replica frozen mid-approval) fails the
// approval that needs it with 503 once the lock wait gives up, and holds up no approval of
// other positions: those all succeed.
func TestStuckLockFailsOnlyItsApprovals(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	ctx := context.Background()
	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "1", "100") // the position exists
	stuck, err := e.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stuck.Rollback(ctx) }()
	if _, err := stuck.Exec(ctx, `SELECT 1 FROM positions WHERE user_id = $1 FOR UPDATE`, e.trader1.ID); err != nil {
		t.Fatal(err)
	}

	blocked := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	var others []*trading.Order
	for i := range 10 {
		others = append(others, e.create(t, e.trader2, newOrder("ETH/USD", trading.Buy, "1", fmt.Sprintf("%d", 10+i), "")))
	}
	blockedErr := make(chan error, 1)
	go func() {
		_, _, err := e.orders.ApproveOrder(as(e.risk1), blocked.ID)
		blockedErr <- err
	}()
	var wg sync.WaitGroup
	errs := make(chan error, len(others))
	for _, o := range others {
		wg.Go(func() {
			if _, _, err := e.orders.ApproveOrder(as(e.admin), o.ID); err != nil {
				errs <- fmt.Errorf("approval of another position's order: %w", err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantRowLocked(t, <-blockedErr)
	if n := e.count(t, `SELECT count(*) FROM trades WHERE user_id = $1`, e.trader2.ID); n != len(others) {
		t.Fatalf("%d trades of the other position, want %d", n, len(others))
	}
	if n := e.count(t, `SELECT count(*) FROM orders WHERE id = $1 AND status = 'pending'`, blocked.ID); n != 1 {
		t.Fatal("the blocked order is no longer pending")
	}

	// The same in one batch: its transaction gives up on the lock, and every approval of it is
	// answered alone, the others approved.
	batch := []postgres.Approval{{OrderID: blocked.ID, Approver: principalOf(e.risk1)}}
	for i := range 5 {
		o := e.create(t, e.trader2, newOrder("ETH/USD", trading.Sell, "1", fmt.Sprintf("%d", 20+i), ""))
		batch = append(batch, postgres.Approval{OrderID: o.ID, Approver: principalOf(e.admin)})
	}
	out, err := e.orders.ApproveBatch(ctx, batch)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	var pgErr *pgconn.PgError // ApproveOrder answers it 503, as above
	if !errors.As(out[0].Err, &pgErr) || pgErr.Code != "55P03" {
		t.Errorf("approval of the stuck position's order in the batch: %v, want its lock timeout", out[0].Err)
	}
	for i, r := range out[1:] {
		if r.Err != nil || r.Trade == nil {
			t.Errorf("approval %d of another position in the batch: %+v", i+1, r)
		}
	}
}

// A rejection of an order whose row a stuck transaction holds gives up after the lock
// timeout, as an approval does, with a 503 that says a row is locked (not that the database
// is down); the order stays pending and is rejected once the row is free.
func TestStuckLockFailsRejectionAtLockTimeout(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	ctx := context.Background()
	o := e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "100", ""))
	stuck, err := e.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stuck.Rollback(ctx) }()
	if _, err := stuck.Exec(ctx, `SELECT 1 FROM orders WHERE id = $1 FOR UPDATE`, o.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.orders.RejectOrder(as(e.risk1), o.ID, "too large")
	wantRowLocked(t, err)
	if err := stuck.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := e.orders.RejectOrder(as(e.risk1), o.ID, "too large"); err != nil || r.Status != trading.StatusRejected {
		t.Fatalf("rejection once the row is free: %+v, %v", r, err)
	}
}

// wantRowLocked: err is the 503 of a lock wait that gave up (lock_timeout, SQLSTATE 55P03,
// not the query timeout), and says so.
func wantRowLocked(t *testing.T, err error) {
	t.Helper()
	wantCode(t, err, trading.EUNAVAILABLE)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
		t.Fatalf("%v: want the lock timeout's error (55P03)", err)
	}
	if msg := trading.ErrorMessage(err); !strings.Contains(msg, "locked by another transaction") {
		t.Fatalf("message %q does not say a record is locked", msg)
	}
}

// allTrades is u's trades in symbol, oldest first (execution time, then id, as the marks
// break ties), every page.
func (e *env) allTrades(u *trading.User, symbol string) ([]*trading.Trade, error) {
	var all []*trading.Trade
	cursor := ""
	for {
		page, next, err := e.portfolio.FindTrades(as(u), trading.TradeFilter{Symbol: &symbol, Limit: 500, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	slices.Reverse(all)
	return all, nil
}

// A decider's roles changed while its approval runs (here between the statement that locks
// the requester's position and the one that decides the order) are read once: the approval
// either goes through whole (the change waits for it) or not at all. The two statements read
// the roles in two snapshots: a demotion in between left an empty position committed for an
// order that stayed pending (and a promotion decided an order whose position was not locked,
// a 500 for the whole batch). Found by the review helper with the same sleeping trigger.
func TestRoleChangeDuringApproval(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	decider := e.addUser(t, "decider", trading.RoleRisk)
	o := e.create(t, e.trader1, newOrder("ETH/USD", trading.Buy, "1", "1", ""))
	ctx := context.Background()
	if _, err := e.db.Pool().Exec(ctx, `
		CREATE FUNCTION slow_positions() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
		CREATE TRIGGER slow_positions BEFORE INSERT ON positions FOR EACH STATEMENT EXECUTE FUNCTION slow_positions()`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := e.orders.ApproveOrder(as(decider), o.ID)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // the approval is in the position's upsert
	if _, err := e.db.Pool().Exec(ctx, `UPDATE users SET roles = '{trader}' WHERE id = $1`, decider.ID); err != nil {
		t.Fatal(err)
	}
	err := <-done
	positions := e.count(t, `SELECT count(*) FROM positions WHERE user_id = $1`, e.trader1.ID)
	trades := e.count(t, `SELECT count(*) FROM trades WHERE order_id = $1`, o.ID)
	switch {
	case err == nil && (positions != 1 || trades != 1):
		t.Fatalf("approved with %d positions and %d trades, want 1 and 1", positions, trades)
	case err != nil && (trading.ErrorCode(err) != trading.EFORBIDDEN || positions != 0 || trades != 0):
		t.Fatalf("approval refused (%v) with %d positions and %d trades, want 403 and nothing", err, positions, trades)
	}
}

// A batch refused by the server is inserted order by order; when the database goes away in
// the middle of that (here: the third order's backend is terminated, as by a failover), the
// orders inserted before it are committed, and their callers must get them, not the error:
// a submitter told 503 retries, and an order without a client order id is then stored twice.
func TestInsertFallbackKeepsCommittedOrders(t *testing.T) {
	t.Parallel()
	e := newEnvTB(t)
	ctx := context.Background()
	// The first insert of a KILL/USD order (in the batch's statement) passes; the second (the
	// fallback's) terminates its own backend: FATAL 57P01, a database that is down.
	if _, err := e.db.Pool().Exec(ctx, `
		CREATE SEQUENCE kill_seq;
		CREATE FUNCTION kill_second() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.symbol = 'KILL/USD' AND nextval('kill_seq') = 2 THEN
				PERFORM pg_terminate_backend(pg_backend_pid());
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER kill_second BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION kill_second()`); err != nil {
		t.Fatal(err)
	}
	batch := []postgres.OrderInsert{
		{ID: uuid.New(), UserID: e.trader1.ID, Order: newOrder("BTC/USD", trading.Buy, "1", "1", "")},
		{ID: uuid.New(), UserID: uuid.New(), Order: newOrder("BTC/USD", trading.Buy, "1", "1", "")}, // refuses the batch
		{ID: uuid.New(), UserID: e.trader2.ID, Order: newOrder("KILL/USD", trading.Buy, "1", "1", "")},
	}
	out, err := e.orders.InsertOrders(ctx, batch, false)
	if n := e.count(t, `SELECT count(*) FROM orders WHERE id = $1`, batch[0].ID); n != 1 {
		t.Fatalf("the first order was not stored (%d); batch: %+v, %v", n, out, err)
	}
	if err != nil || len(out) != len(batch) || out[0].Err != nil || out[0].Order == nil || out[0].Order.ID != batch[0].ID {
		t.Fatalf("the first order is stored, but its caller got %+v, %v: want the order", out, err)
	}
	if out[2].Err == nil {
		t.Errorf("the order whose insert was cut off: %+v, want an error", out[2])
	}
}
