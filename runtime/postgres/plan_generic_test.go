package postgres_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// recorder is a pgx.QueryTracer that keeps the statements the services send.
type recorder struct {
	mu    sync.Mutex
	calls []recordedQuery
}

type recordedQuery struct {
	sql  string
	args []any
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, recordedQuery{d.SQL, d.Args})
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *recorder) take() []recordedQuery {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// traderNamed is the trader the plan tests' SQL inserted under name.
func traderNamed(t *testing.T, db *postgres.DB, name string) *trading.User {
	t.Helper()
	return userNamed(t, db, name, trading.RoleTrader)
}

// userNamed is the user with role that the plan tests' SQL inserted under name.
func userNamed(t *testing.T, db *postgres.DB, name string, role trading.Role) *trading.User {
	t.Helper()
	u := &trading.User{Username: name, Roles: []trading.Role{role}}
	if err := db.Pool().QueryRow(context.Background(), `SELECT id FROM users WHERE username = $1`, name).Scan(&u.ID); err != nil {
		t.Fatal(err)
	}
	return u
}

// execAll runs the plan tests' dataset statements in order.
func execAll(t *testing.T, db *postgres.DB, statements ...string) {
	t.Helper()
	for _, sql := range statements {
		if _, err := db.Pool().Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// tracedDB opens dsn on one pooled connection (so that pg_prepared_statements shows every
// statement the tests ran) with a recorder of the statements.
func tracedDB(t *testing.T, dsn string) (*postgres.DB, *recorder) {
	t.Helper()
	rec := &recorder{}
	db, err := postgres.Open(context.Background(), postgres.Config{URL: dsn, MinConns: 1, MaxConns: 1, Tracer: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db, rec
}

// TestOrderListingsArePlannedWithTheirValues: pgx prepares each statement once per
// connection, and after five executions PostgreSQL runs a prepared statement with its generic
// plan when that looks no dearer than the custom ones: one plan for every value of the status
// and symbol parameters, costed for an average value. For FindOrders that plan walks the
// orders newest first and filters, which for a common symbol costs what the custom plan
// costs, so it is taken; a listing of the few pending orders, or of a symbol nobody trades,
// then reads the whole table to fill a page that never fills (200k orders, 10 pending: 50 ms
// and 6.6k buffers per listing instead of 0.05 ms and 19 with the partial pending index).
//
// The listings are planned with their values on every call; the statements (on one pooled
// connection) must never have run with a generic plan, and the plan such a statement would
// get is shown when they did.
func TestOrderListingsArePlannedWithTheirValues(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewMigratedDatabase(t)
	db, rec := tracedDB(t, dsn)
	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{})
	execAll(t, db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'g' || g, 'x', ARRAY['trader'] FROM generate_series(1, 100) g`,
		`INSERT INTO users (username, password_hash, roles) VALUES ('desk', 'x', ARRAY['risk'])`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, created_at, decided_at)
		SELECT (ARRAY['BTC/USD','ETH/USD','BNB/USD','XRP/USD'])[1 + g % 4], 'buy', 1, 100,
			CASE WHEN g <= 10 THEN 'pending' WHEN g % 2 = 0 THEN 'approved' ELSE 'rejected' END,
			u.ids[1 + g % cardinality(u.ids)], now() - g * interval '1 second',
			CASE WHEN g <= 10 THEN NULL ELSE now() END
		FROM generate_series(1, 20000) g,
			(SELECT array_agg(id) AS ids FROM users WHERE 'trader' = ANY(roles)) u`,
		`ANALYZE users`, `ANALYZE orders`,
	)
	desk := userNamed(t, db, "desk", trading.RoleRisk)

	status := func(s trading.OrderStatus) *trading.OrderStatus { return &s }
	symbol := func(s string) *string { return &s }
	list := func(f trading.OrderFilter) {
		t.Helper()
		if _, _, err := orders.FindOrders(as(desk), f); err != nil {
			t.Fatal(err)
		}
	}
	// A desk browsing: mostly common values, then the rare ones.
	for range 8 {
		list(trading.OrderFilter{Symbol: symbol("BTC/USD")})
		list(trading.OrderFilter{Status: status(trading.StatusApproved)})
		list(trading.OrderFilter{Status: status(trading.StatusRejected), Symbol: symbol("ETH/USD")})
	}
	rec.take()
	list(trading.OrderFilter{Symbol: symbol("ADA/USD")})
	list(trading.OrderFilter{Status: status(trading.StatusPending)})
	list(trading.OrderFilter{Status: status(trading.StatusPending), Symbol: symbol("BTC/USD")})
	traced := rec.take()

	noGenericPlans(t, db, "orders", traced)
}

// noGenericPlans fails for each statement on table, prepared on db's connections, that ran
// with its generic plan, showing the plan it would get with the arguments traced for it.
func noGenericPlans(t *testing.T, db *postgres.DB, table string, traced []recordedQuery) {
	t.Helper()
	ctx := context.Background()
	rows, err := db.Pool().Query(ctx, `
		SELECT statement, generic_plans FROM pg_prepared_statements
		WHERE statement LIKE '%FROM '||$1||'%' AND statement NOT LIKE '%pg_prepared_statements%'
			AND generic_plans > 0`, table)
	if err != nil {
		t.Fatal(err)
	}
	type stmt struct {
		SQL     string
		Generic int64
	}
	generic, err := pgx.CollectRows(rows, pgx.RowToStructByPos[stmt])
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range generic {
		for _, q := range traced {
			if q.sql == g.SQL {
				t.Errorf("ran %d times with its generic plan:\n%s\nwhich for %v is:\n%s",
					g.Generic, g.SQL, q.args, genericPlan(t, db, q.sql, q.args))
			}
		}
		if !slices.ContainsFunc(traced, func(q recordedQuery) bool { return q.sql == g.SQL }) {
			t.Errorf("ran %d times with its generic plan:\n%s", g.Generic, g.SQL)
		}
	}
}

// TestTradeListingsArePlannedWithTheirValues: FindTrades with a symbol met the same generic
// plan as the order listings (TestOrderListingsArePlannedWithTheirValues). The generic plan
// of user_id = $1 AND symbol = $2 walks the user's trades newest first and filters on the
// symbol; costed for an average user and symbol, it looks no dearer than the custom plans of
// traders listing a symbol less traded than the average one, so after five of those it was
// taken for every call. A trader with many trades listing a symbol they traded a few times
// (or never) then read every one of their trades per page (200k trades, 40k of one user, 5
// in the symbol: 60 ms and 3.4k buffers instead of 0.09 ms and 4 through
// trades_symbol_executed_idx).
func TestTradeListingsArePlannedWithTheirValues(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewMigratedDatabase(t)
	db, rec := tracedDB(t, dsn)
	portfolio := postgres.NewPortfolioService(db)
	// 40 traders with 1000 trades each over four symbols, and a trader (whale) with 40k
	// trades in BTC/USD and 5 in SOL/USD, which nobody else trades.
	execAll(t, db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'g' || g, 'x', ARRAY['trader'] FROM generate_series(1, 40) g`,
		`INSERT INTO users (username, password_hash, roles) VALUES ('whale', 'x', ARRAY['trader']), ('desk', 'x', ARRAY['risk'])`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, decided_by, created_at, decided_at)
		SELECT (ARRAY['BTC/USD','ETH/USD','BNB/USD','XRP/USD'])[1 + g / 40 % 4], 'buy', 1, 100, 'approved',
			u.ids[1 + g % cardinality(u.ids)], d.id, now() - g * interval '1 second', now() - g * interval '1 second'
		FROM generate_series(1, 40000) g,
			(SELECT array_agg(id) AS ids FROM users WHERE username LIKE 'g%') u, (SELECT id FROM users WHERE username = 'desk') d`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, decided_by, created_at, decided_at)
		SELECT CASE WHEN g % 8000 = 0 THEN 'SOL/USD' ELSE 'BTC/USD' END, 'buy', 1, 100, 'approved',
			w.id, d.id, now() - g * interval '1 second', now() - g * interval '1 second'
		FROM generate_series(1, 40000) g,
			(SELECT id FROM users WHERE username = 'whale') w, (SELECT id FROM users WHERE username = 'desk') d`, `
		INSERT INTO trades (order_id, user_id, symbol, side, quantity, price, executed_at)
		SELECT id, requested_by, symbol, side, quantity, price, decided_at FROM orders`,
		`ANALYZE users`, `ANALYZE orders`, `ANALYZE trades`,
	)
	whale := traderNamed(t, db, "whale")
	symbol := func(s string) *string { return &s }
	list := func(u *trading.User, sym string) {
		t.Helper()
		if _, _, err := portfolio.FindTrades(as(u), trading.TradeFilter{Symbol: symbol(sym)}); err != nil {
			t.Fatal(err)
		}
	}
	// Traders looking at their symbols (each in a quarter of their trades, less common than
	// BTC/USD overall, so that the generic plan looks no dearer), then the whale at rare ones.
	for i := range 8 {
		list(traderNamed(t, db, fmt.Sprintf("g%d", 1+i)), "ETH/USD")
		list(traderNamed(t, db, fmt.Sprintf("g%d", 11+i)), "BNB/USD")
		list(traderNamed(t, db, fmt.Sprintf("g%d", 21+i)), "XRP/USD")
	}
	rec.take()
	list(whale, "SOL/USD")
	list(whale, "ADA/USD")
	noGenericPlans(t, db, "trades", rec.take())
}

// genericPlan is the text of the generic plan of sql with args (EXPLAIN EXECUTE of a
// prepared statement under plan_cache_mode = force_generic_plan).
func genericPlan(t *testing.T, db *postgres.DB, sql string, args []any) string {
	t.Helper()
	ctx := context.Background()
	var plan string
	err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `PREPARE generic_probe AS `+sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			return err
		}
		params := make([]string, len(args))
		for i := range args {
			params[i] = "$" + string(rune('1'+i))
		}
		rows, err := tx.Query(ctx, `EXPLAIN (COSTS OFF) EXECUTE generic_probe(`+strings.Join(params, ", ")+`)`,
			append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
		if err != nil {
			return err
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		plan = strings.Join(lines, "\n")
		_, err = tx.Exec(ctx, `DEALLOCATE generic_probe`)
		return err
	})
	if err != nil {
		t.Fatalf("generic plan of %s: %v", sql, err)
	}
	return plan
}
