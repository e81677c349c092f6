package postgres_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// TestQueriesUseTheirIndexes: each query shape the services run is served by the index whose
// comment names it. Sequential scans are switched off because the test tables are tiny; the
// question is whether a matching index exists, not what the planner prefers on ten rows.
func TestQueriesUseTheirIndexes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := context.Background()
	// Enough rows over several users, symbols and statuses for the planner's statistics to
	// mean something.
	execAll(t, e.db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'plan' || g, 'x', ARRAY['trader'] FROM generate_series(1, 200) g`, `
		INSERT INTO orders (client_order_id, symbol, side, quantity, price, status, requested_by, created_at, decided_at)
		SELECT 'c-' || g, (ARRAY['BTC/USD','ETH/USD','BNB/USD','XRP/USD','ADA/USD'])[1 + g % 5], 'buy', 1, 100,
			(ARRAY['pending','approved','rejected','approved','approved','rejected','approved','approved'])[1 + g % 8],
			u.ids[1 + g % cardinality(u.ids)], now() - g * interval '1 second',
			CASE WHEN g % 8 = 0 THEN NULL ELSE now() END
		FROM generate_series(1, 20000) g, (SELECT array_agg(id) AS ids FROM users) u`, `
		INSERT INTO trades (order_id, user_id, symbol, side, quantity, price, executed_at)
		SELECT id, requested_by, symbol, side, quantity, price, decided_at - (random() * interval '30 days')
		FROM orders WHERE status = 'approved'`,
		`ANALYZE users`, `ANALYZE orders`, `ANALYZE trades`,
	)
	user := "'" + e.trader1.ID.String() + "'::uuid"
	const key = `(now() - interval '10000 seconds', '00000000-0000-0000-0000-000000000001'::uuid)`
	// index may name alternatives separated by "|".
	cases := []struct{ index, query string }{
		{"orders_requested_by_keyset_idx", `SELECT id FROM orders WHERE requested_by = ` + user +
			` AND (created_at, id) < ` + key + ` ORDER BY created_at DESC, id DESC LIMIT 51`},
		{"orders_keyset_idx", `SELECT id FROM orders WHERE (created_at, id) < ` + key +
			` ORDER BY created_at DESC, id DESC LIMIT 51`},
		{"orders_requested_by_symbol_keyset_idx", `SELECT id FROM orders WHERE requested_by = ` + user +
			` AND symbol = 'ETH/USD' AND (created_at, id) < ` + key + ` ORDER BY created_at DESC, id DESC LIMIT 51`},
		// The whole pending queue (2500 orders here): read in order, or through the other
		// partial index on pending and sorted. Listings by status: TestOrderListingPagesReadFewBuffers.
		{"orders_status_keyset_idx|orders_pending_requested_by_idx", `SELECT id FROM orders WHERE status = 'pending' ORDER BY created_at, id`},
		{"orders_pending_requested_by_idx", `SELECT count(*) FROM orders WHERE requested_by = ` + user + ` AND status = 'pending'`},
		// A page of a symbol here (a fifth of the orders) is found as fast by walking
		// orders_keyset_idx; all of a symbol's orders, in order, are not. Pages of symbols of
		// every frequency: TestRiskSymbolListingPagesReadFewBuffers.
		{"orders_symbol_keyset_idx", `SELECT id FROM orders WHERE symbol = 'BTC/USD' ORDER BY created_at DESC, id DESC`},
		{"orders_symbol_status_keyset_idx", `SELECT id FROM orders WHERE symbol = 'BTC/USD' AND status = 'rejected'
			ORDER BY created_at DESC, id DESC`},
		{"orders_requested_by_client_order_id_key", `SELECT id FROM orders WHERE requested_by = ` + user + ` AND client_order_id = 'c-1'`},
		{"trades_symbol_executed_idx", `SELECT price FROM trades WHERE symbol = 'BTC/USD' ORDER BY executed_at DESC, id DESC LIMIT 1`},
		// About 60 trades per user here: all of them, through either index of the user's
		// trades, then sorted (with a user's thousands, trades_user_keyset_idx in order).
		{"trades_user_keyset_idx|trades_user_symbol_keyset_idx", `SELECT id FROM trades WHERE user_id = ` + user + ` AND (executed_at, id) < ` + key +
			` ORDER BY executed_at DESC, id DESC LIMIT 51`},
		{"trades_user_keyset_idx", `SELECT COALESCE(SUM(realized_pnl), 0) FROM trades WHERE user_id = ` + user +
			` AND executed_at >= date_trunc('day', now(), 'UTC')`},
		{"trades_user_symbol_keyset_idx", `SELECT id FROM trades WHERE user_id = ` + user +
			` AND symbol = 'ETH/USD' AND (executed_at, id) < ` + key + ` ORDER BY executed_at DESC, id DESC LIMIT 51`},
		{"refresh_tokens_session_id_idx", `SELECT token_hash FROM refresh_tokens WHERE session_id = ` + user},
		// SessionPruner's candidates, and the rotated tokens of those it deletes.
		{"sessions_revoked_at_idx", `SELECT id FROM sessions WHERE revoked_at < now() - interval '2 hours' LIMIT 500`},
		{"refresh_tokens_current_expires_at_idx", `SELECT session_id FROM refresh_tokens
			WHERE used_at IS NULL AND expires_at < now() - interval '2 hours' LIMIT 500`},
		{"refresh_tokens_session_id_idx", `SELECT ctid FROM refresh_tokens WHERE session_id = ANY(ARRAY[` + user + `])
			AND used_at IS NOT NULL LIMIT 5000`},
	}
	for _, c := range cases {
		err := pgx.BeginFunc(ctx, e.db.Pool(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, `EXPLAIN `+c.query)
			if err != nil {
				return err
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			plan := strings.Join(lines, "\n")
			if !slices.ContainsFunc(strings.Split(c.index, "|"), func(ix string) bool { return strings.Contains(plan, " "+ix+" ") }) {
				t.Errorf("%s\ndoes not use %s:\n%s", c.query, c.index, plan)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestOrderListingPagesReadFewBuffers: a page of GET /api/orders reads about the rows it
// returns, whatever the filter and however deep the cursor. A risk user's listing of a rare
// status (the few rejected orders among many approved ones) read every order of that status
// through orders_status_idx and sorted them, per page: 418 buffers and 10-14 ms on 200k
// orders with 410 rejected, growing with their number (54 and 0.4 ms through
// orders_status_keyset_idx). Each listing runs through FindOrders; its statement is then
// run again under EXPLAIN (ANALYZE, BUFFERS) with the same values.
func TestOrderListingPagesReadFewBuffers(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewMigratedDatabase(t)
	db, rec := tracedDB(t, dsn)
	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{})
	// 50k orders of 50 traders over four symbols, newest first: 1% rejected, 10 pending.
	execAll(t, db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'g' || g, 'x', ARRAY['trader'] FROM generate_series(1, 50) g`,
		`INSERT INTO users (username, password_hash, roles) VALUES ('desk', 'x', ARRAY['risk'])`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, created_at, decided_at)
		SELECT (ARRAY['BTC/USD','ETH/USD','BNB/USD','XRP/USD'])[1 + g / 50 % 4], 'buy', 1, 100,
			CASE WHEN g % 5000 = 7 THEN 'pending' WHEN g % 97 = 3 THEN 'rejected' ELSE 'approved' END,
			u.ids[1 + g % cardinality(u.ids)], now() - g * interval '1 second',
			CASE WHEN g % 5000 = 7 THEN NULL ELSE now() END
		FROM generate_series(1, 50000) g,
			(SELECT array_agg(id) AS ids FROM users WHERE 'trader' = ANY(roles)) u`,
		`VACUUM ANALYZE orders`,
	)
	desk := userNamed(t, db, "desk", trading.RoleRisk)
	status := func(s trading.OrderStatus) *trading.OrderStatus { return &s }
	symbol := func(s string) *string { return &s }
	for _, c := range []struct {
		name   string
		filter trading.OrderFilter
		pages  int
	}{
		{"all", trading.OrderFilter{}, 3},
		{"approved", trading.OrderFilter{Status: status(trading.StatusApproved)}, 3},
		{"rejected", trading.OrderFilter{Status: status(trading.StatusRejected)}, 3},
		{"pending", trading.OrderFilter{Status: status(trading.StatusPending)}, 1},
		{"BTC/USD", trading.OrderFilter{Symbol: symbol("BTC/USD")}, 3},
		{"pending BTC/USD", trading.OrderFilter{Status: status(trading.StatusPending), Symbol: symbol("BTC/USD")}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := c.filter
			for page := 1; page <= c.pages; page++ {
				_, next := readPage(t, db, rec, page, nil, func() (int, string, error) {
					got, next, err := orders.FindOrders(as(desk), f)
					return len(got), next, err
				})
				if next == "" {
					break
				}
				f.Cursor = next
			}
		})
	}
}

// readPage reads one page of a listing through list, which returns the page's row count and
// next cursor, and fails t when the listing sent other than one statement. Unless measured
// (given the next cursor) says no, it runs that statement again under EXPLAIN and fails t when
// it read more than a page's worth of buffers (two a row and twenty: a page's rows are
// scattered over the heap, one buffer each at worst, plus the index's).
func readPage(t *testing.T, db *postgres.DB, rec *recorder, page int, measured func(next string) bool, list func() (int, string, error)) (int, string) {
	t.Helper()
	rec.take()
	n, next, err := list()
	if err != nil {
		t.Fatal(err)
	}
	traced := rec.take()
	if len(traced) != 1 {
		t.Fatalf("the listing sent %d statements, want 1", len(traced))
	}
	if measured == nil || measured(next) {
		plan, buffers := explainBuffers(t, db, traced[0])
		if limit := 2*n + 20; buffers > limit {
			t.Errorf("page %d (%d rows) read %d buffers, want at most %d:\n%s", page, n, buffers, limit, plan)
		}
	}
	return n, next
}

// explainBuffers runs q again under EXPLAIN (ANALYZE, BUFFERS) with its own values and
// execution mode, and returns the plan and the shared buffers its execution read (the top
// node's, which include its children's; planning's are apart).
func explainBuffers(t *testing.T, db *postgres.DB, q recordedQuery) (string, int) {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(), `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) `+q.sql, q.args...)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	for _, l := range lines {
		if l, ok := strings.CutPrefix(strings.TrimSpace(l), "Buffers: shared "); ok {
			buffers := 0
			for _, kv := range strings.Fields(l) {
				if n, ok := strings.CutPrefix(kv, "hit="); ok {
					buffers += atoi(t, n)
				} else if n, ok := strings.CutPrefix(kv, "read="); ok {
					buffers += atoi(t, n)
				}
			}
			return plan, buffers
		}
	}
	return plan, 0 // nothing read
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// TestTraderSymbolListingPagesReadFewBuffers: a page of a trader's GET /api/orders?symbol= or
// GET /api/trades?symbol= reads about the rows it returns, also for a symbol that is busy
// overall but rare for the trader. With no index on (trader, symbol, time) the listing walked
// the trader's rows, or the symbol's, or all of them, newest first and filtered (here 338-752
// buffers per page, 36-47 for a page of 5). With the indexes of migration 00007 but not its
// statistics on the pair, the whale's listings still walked orders_keyset_idx and
// trades_symbol_executed_idx: the planner took whale AND ETH/USD for 7.4k of the 42k rows
// (half are the whale's, a third ETH/USD) where they are 105. Each listing runs through FindOrders or FindTrades; its statement is then run again
// under EXPLAIN (ANALYZE, BUFFERS) with the same values.
func TestTraderSymbolListingPagesReadFewBuffers(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewMigratedDatabase(t)
	db, rec := tracedDB(t, dsn)
	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{})
	portfolio := postgres.NewPortfolioService(db)
	// 42k approved orders, each with its trade, interleaved in time: a whale (half of them,
	// BTC/USD but for one in 200 in ETH/USD), a minnow (one in 20, ETH/USD but for one in 50
	// in BTC/USD) and 20 others, two thirds of theirs in ETH/USD. Both symbols are busy; each
	// is rare for one of the two traders who list it.
	execAll(t, db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'g' || g, 'x', ARRAY['trader'] FROM generate_series(1, 20) g`,
		`INSERT INTO users (username, password_hash, roles)
		 VALUES ('whale', 'x', ARRAY['trader']), ('minnow', 'x', ARRAY['trader']), ('desk', 'x', ARRAY['risk'])`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, decided_by, created_at, decided_at)
		SELECT CASE WHEN g % 2 = 0 THEN CASE WHEN g % 400 = 0 THEN 'ETH/USD' ELSE 'BTC/USD' END
				WHEN g % 20 = 1 THEN CASE WHEN g % 1000 = 1 THEN 'BTC/USD' ELSE 'ETH/USD' END
				WHEN g % 3 = 0 THEN 'BTC/USD' ELSE 'ETH/USD' END,
			'buy', 1, 100, 'approved',
			CASE WHEN g % 2 = 0 THEN w.id WHEN g % 20 = 1 THEN m.id ELSE u.ids[1 + g % cardinality(u.ids)] END,
			d.id, now() - g * interval '1 second', now() - g * interval '1 second'
		FROM generate_series(1, 42000) g,
			(SELECT array_agg(id) AS ids FROM users WHERE username LIKE 'g%') u,
			(SELECT id FROM users WHERE username = 'whale') w, (SELECT id FROM users WHERE username = 'minnow') m,
			(SELECT id FROM users WHERE username = 'desk') d`, `
		INSERT INTO trades (order_id, user_id, symbol, side, quantity, price, executed_at)
		SELECT id, requested_by, symbol, side, quantity, price, decided_at FROM orders ORDER BY created_at DESC`,
		`VACUUM ANALYZE users`, `VACUUM ANALYZE orders`, `VACUUM ANALYZE trades`,
	)
	// list returns a page's row count and the next cursor.
	type list func(u *trading.User, symbol, cursor string) (int, string, error)
	listOrders := func(u *trading.User, symbol, cursor string) (int, string, error) {
		got, next, err := orders.FindOrders(as(u), trading.OrderFilter{Symbol: &symbol, Cursor: cursor})
		return len(got), next, err
	}
	listTrades := func(u *trading.User, symbol, cursor string) (int, string, error) {
		got, next, err := portfolio.FindTrades(as(u), trading.TradeFilter{Symbol: &symbol, Cursor: cursor})
		return len(got), next, err
	}
	for _, c := range []struct {
		name, user, symbol string
		list               list
	}{
		{"orders of whale in ETH/USD", "whale", "ETH/USD", listOrders},
		{"orders of minnow in BTC/USD", "minnow", "BTC/USD", listOrders},
		{"orders of whale in BTC/USD", "whale", "BTC/USD", listOrders},
		{"trades of whale in ETH/USD", "whale", "ETH/USD", listTrades},
		{"trades of minnow in BTC/USD", "minnow", "BTC/USD", listTrades},
		{"trades of whale in BTC/USD", "whale", "BTC/USD", listTrades},
	} {
		t.Run(c.name, func(t *testing.T) {
			u, cursor := traderNamed(t, db, c.user), ""
			for page := 1; page <= 3; page++ {
				n, next := readPage(t, db, rec, page, nil, func() (int, string, error) { return c.list(u, c.symbol, cursor) })
				if n == 0 {
					t.Fatalf("page %d is empty", page)
				}
				if next == "" {
					break
				}
				cursor = next
			}
		})
	}
}

// TestRiskSymbolListingPagesReadFewBuffers: a page of a risk user's GET /api/orders?symbol=,
// with or without ?status=, reads about the rows it returns, for a symbol of any frequency
// and at any cursor depth. With only orders_symbol_status_idx (symbol, status) to lead to a
// symbol, a symbol of a few tenths of a percent of the orders walked orders_keyset_idx and
// filtered, or read all of the symbol's orders and sorted them, per page; and the rejected
// orders of a busy symbol were found by walking all rejected orders newest first, or by
// reading all of the symbol's rejected orders and sorting them (200k orders, 40 symbols:
// 320-420 buffers per page of a symbol with 0.2-0.3% of the orders, 310-330 for the rejected
// orders of one with 5-8%). Each listing runs through FindOrders; its statement is then run
// again under EXPLAIN (ANALYZE, BUFFERS) with the same values.
func TestRiskSymbolListingPagesReadFewBuffers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	db, rec := tracedDB(t, dsn)
	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{})
	// 80k orders of 40 traders, newest first, symbols and statuses drawn by a hash of the
	// order's number (so that no symbol lines up with a status): BTC/USD 60%, ETH/USD 25%,
	// SOL/USD 10%, ADA/USD 4.3%, DOT/USD 0.3% (about 240), XLM/USD 40 orders spread over the
	// whole time; 3% rejected, 30 pending among the newest.
	execAll(t, db,
		`INSERT INTO users (username, password_hash, roles)
		 SELECT 'g' || g, 'x', ARRAY['trader'] FROM generate_series(1, 40) g`,
		`INSERT INTO users (username, password_hash, roles) VALUES ('desk', 'x', ARRAY['risk'])`, `
		INSERT INTO orders (symbol, side, quantity, price, status, requested_by, decided_by, created_at, decided_at)
		SELECT CASE WHEN g % 2000 = 7 THEN 'XLM/USD' WHEN s < 600 THEN 'BTC/USD' WHEN s < 850 THEN 'ETH/USD'
				WHEN s < 950 THEN 'SOL/USD' WHEN s < 997 THEN 'ADA/USD' ELSE 'DOT/USD' END,
			'buy', 1, 100, st, u.ids[1 + g % cardinality(u.ids)],
			CASE WHEN st = 'pending' THEN NULL ELSE d.id END,
			now() - g * interval '1 second', CASE WHEN st = 'pending' THEN NULL ELSE now() END
		FROM generate_series(1, 80000) g
		CROSS JOIN LATERAL (SELECT abs(hashint4(g)) % 1000 AS s,
			CASE WHEN g <= 3000 AND g % 100 = 0 THEN 'pending'
				WHEN abs(hashint4(-g)) % 100 < 3 THEN 'rejected' ELSE 'approved' END AS st) x,
			(SELECT array_agg(id) AS ids FROM users WHERE 'trader' = ANY(roles)) u,
			(SELECT id FROM users WHERE username = 'desk') d`,
		`VACUUM ANALYZE users`, `VACUUM ANALYZE orders`,
	)
	desk := userNamed(t, db, "desk", trading.RoleRisk)
	for _, symbol := range []string{"BTC/USD", "ETH/USD", "SOL/USD", "ADA/USD", "DOT/USD", "XLM/USD"} {
		for _, status := range []trading.OrderStatus{"", trading.StatusApproved, trading.StatusRejected, trading.StatusPending} {
			name := symbol
			f := trading.OrderFilter{Symbol: &symbol}
			if status != "" {
				f.Status, name = &status, symbol+" "+string(status)
			}
			t.Run(name, func(t *testing.T) {
				var want int
				q := `SELECT count(*) FROM orders WHERE symbol = $1 AND ($2 = '' OR status = $2)`
				if err := db.Pool().QueryRow(ctx, q, symbol, string(status)).Scan(&want); err != nil {
					t.Fatal(err)
				}
				// Every page to the end, so that the deep cursors are measured too: the
				// first three, every twentieth and the last.
				listed := 0
				for page := 1; ; page++ {
					measured := func(next string) bool { return page <= 3 || page%20 == 0 || next == "" }
					n, next := readPage(t, db, rec, page, measured, func() (int, string, error) {
						got, next, err := orders.FindOrders(as(desk), f)
						return len(got), next, err
					})
					listed += n
					if next == "" {
						break
					}
					f.Cursor = next
				}
				if listed != want {
					t.Errorf("the pages listed %d orders, want %d", listed, want)
				}
			})
		}
	}
}
