package postgres_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
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
	for _, sql := range []string{
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
	} {
		if _, err := e.db.Pool().Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	user := "'" + e.trader1.ID.String() + "'::uuid"
	const key = `(now() - interval '10000 seconds', '00000000-0000-0000-0000-000000000001'::uuid)`
	// index may name alternatives separated by "|".
	cases := []struct{ index, query string }{
		{"orders_requested_by_keyset_idx", `SELECT id FROM orders WHERE requested_by = ` + user +
			` AND (created_at, id) < ` + key + ` ORDER BY created_at DESC, id DESC LIMIT 51`},
		// The planner may take orders_created_at_idx plus an incremental sort on id, as cheap
		// while created_at is nearly unique.
		{"orders_keyset_idx|orders_created_at_idx", `SELECT id FROM orders WHERE (created_at, id) < ` + key +
			` ORDER BY created_at DESC, id DESC LIMIT 51`},
		{"orders_pending_created_idx", `SELECT id FROM orders WHERE status = 'pending' ORDER BY created_at, id LIMIT 1000`},
		{"orders_pending_requested_by_idx", `SELECT count(*) FROM orders WHERE requested_by = ` + user + ` AND status = 'pending'`},
		{"orders_symbol_status_idx", `SELECT id FROM orders WHERE symbol = 'BTC/USD' AND status = 'approved'`},
		{"orders_requested_by_client_order_id_key", `SELECT id FROM orders WHERE requested_by = ` + user + ` AND client_order_id = 'c-1'`},
		{"trades_symbol_executed_idx", `SELECT price FROM trades WHERE symbol = 'BTC/USD' ORDER BY executed_at DESC, id DESC LIMIT 1`},
		{"trades_user_keyset_idx", `SELECT id FROM trades WHERE user_id = ` + user + ` AND (executed_at, id) < ` + key +
			` ORDER BY executed_at DESC, id DESC LIMIT 51`},
		{"trades_user_keyset_idx", `SELECT COALESCE(SUM(realized_pnl), 0) FROM trades WHERE user_id = ` + user +
			` AND executed_at >= date_trunc('day', now(), 'UTC')`},
		{"refresh_tokens_session_id_idx", `SELECT token_hash FROM refresh_tokens WHERE session_id = ` + user},
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
