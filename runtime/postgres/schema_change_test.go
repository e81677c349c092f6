package postgres_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// TestSchemaChangeUnderCachedStatements: an upgrade migrates the database while the previous
// runtime serves (the operator's migration Job runs before the rollout). pgx prepares every
// statement once per connection, and PostgreSQL refuses to run a prepared statement whose
// result columns changed type ("cached plan must not change result type", SQLSTATE 0A000):
// after a column type change each pooled connection failed each such statement once, a 500
// every time (an upgrade audit saw 18 on one replica, spread over 17 s, after migration
// 00003). Each kind of call, met first by the change, must answer: the runtime drops the
// outdated connections and runs the call again.
func TestSchemaChangeUnderCachedStatements(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// Each change gives the columns that the statements return another type modifier, as
	// 00003 did (numeric(20,8) to numeric(32,20)); the next change puts them back.
	changes := 0
	changeTypes := func() {
		t.Helper()
		changes++
		extra := changes % 2 // 1, 0, 1, ...
		for _, ddl := range []string{
			fmt.Sprintf(`ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(%d,20),
				ALTER COLUMN quantity TYPE numeric(%d,8), ALTER COLUMN realized_pnl TYPE numeric(%[2]d,8)`, 32+extra, 30+extra),
			fmt.Sprintf(`ALTER TABLE trades ALTER COLUMN price TYPE numeric(%d,8), ALTER COLUMN realized_pnl TYPE numeric(%d,8)`, 20+extra, 30+extra),
			fmt.Sprintf(`ALTER TABLE orders ALTER COLUMN price TYPE numeric(%d,8), ALTER COLUMN quantity TYPE numeric(%[1]d,8)`, 20+extra),
			fmt.Sprintf(`ALTER TABLE users ALTER COLUMN username TYPE %s`, map[int]string{1: "varchar(64)", 0: "text"}[extra]),
			fmt.Sprintf(`ALTER TABLE sessions ALTER COLUMN revoked_at TYPE %s`, map[int]string{1: "timestamptz(6)", 0: "timestamptz"}[extra]),
		} {
			if _, err := admin.Exec(ctx, ddl); err != nil {
				t.Fatalf("%s: %v", ddl, err)
			}
		}
	}

	// One connection, so that the statements prepared before the change are on the
	// connection the call gets, as they are on every busy connection of a replica.
	db, err := postgres.Open(ctx, postgres.Config{URL: dsn, MinConns: 1, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	loss := dec("1000000")
	e := &env{db: db}
	services := func() {
		e.users = postgres.NewUserService(e.db)
		e.sessions = postgres.NewSessionService(e.db)
		e.orders = postgres.NewOrderService(e.db, postgres.OrderServiceConfig{MaxDailyLoss: &loss})
		e.portfolio = postgres.NewPortfolioService(e.db)
	}
	services()
	trader := e.addUser(t, "trader1", trading.RoleTrader)
	risk := e.addUser(t, "risk1", trading.RoleRisk)
	tokens := 0
	token := func() []byte {
		tokens++
		h := sha256.Sum256(fmt.Appendf(nil, "token %d", tokens))
		return h[:]
	}
	expires := time.Now().Add(time.Hour)
	pending := func() *trading.Order {
		t.Helper()
		return e.create(t, trader, newOrder("BTC/USD", trading.Buy, "1", "100.5", ""))
	}
	session := func() (uuid.UUID, []byte) {
		t.Helper()
		tok := token()
		sid, err := e.sessions.CreateSession(ctx, trader.ID, trader.Roles, tok, expires)
		if err != nil {
			t.Fatal(err)
		}
		return sid, tok
	}

	// Each case prepares what its call needs, before the change; the call runs after it.
	cases := []struct {
		name  string
		setup func() (call func() error)
	}{
		{"Authenticate", func() func() error {
			return func() error { _, err := e.users.Authenticate(ctx, "trader1", "shared-test-password"); return err }
		}},
		{"FindUserByID", func() func() error {
			return func() error { _, err := e.users.FindUserByID(ctx, trader.ID); return err }
		}},
		{"CreateSession", func() func() error {
			return func() error {
				_, err := e.sessions.CreateSession(ctx, trader.ID, trader.Roles, token(), expires)
				return err
			}
		}},
		{"SessionActive", func() func() error {
			sid, _ := session()
			return func() error { _, err := e.sessions.SessionActive(ctx, sid); return err }
		}},
		{"RotateRefreshToken", func() func() error {
			_, tok := session()
			return func() error { _, _, err := e.sessions.RotateRefreshToken(ctx, tok, token(), expires); return err }
		}},
		{"RevokeSession", func() func() error {
			_, tok := session()
			return func() error { _, err := e.sessions.RevokeSession(ctx, tok); return err }
		}},
		{"CreateOrder", func() func() error {
			return func() error {
				_, _, err := e.orders.CreateOrder(as(trader), newOrder("BTC/USD", trading.Sell, "1", "101", ""))
				return err
			}
		}},
		{"CreateOrder again with its client order id", func() func() error {
			n := newOrder("BTC/USD", trading.Sell, "1", "101", uuid.NewString())
			e.create(t, trader, n)
			return func() error { _, _, err := e.orders.CreateOrder(as(trader), n); return err }
		}},
		{"ApproveOrder", func() func() error {
			o := pending()
			return func() error { _, _, err := e.orders.ApproveOrder(as(risk), o.ID); return err }
		}},
		{"ApproveOrder of an order not pending", func() func() error {
			o := pending()
			if _, err := e.orders.RejectOrder(as(risk), o.ID, "no"); err != nil {
				t.Fatal(err)
			}
			return func() error {
				_, _, err := e.orders.ApproveOrder(as(risk), o.ID)
				if trading.ErrorCode(err) == trading.ECONFLICT {
					return nil
				}
				return fmt.Errorf("%v, want a conflict", err)
			}
		}},
		{"RejectOrder", func() func() error {
			o := pending()
			return func() error { _, err := e.orders.RejectOrder(as(risk), o.ID, "no"); return err }
		}},
		{"FindOrderByID", func() func() error {
			o := pending()
			return func() error { _, err := e.orders.FindOrderByID(as(trader), o.ID); return err }
		}},
		{"FindOrders", func() func() error {
			return func() error { _, _, err := e.orders.FindOrders(as(risk), trading.OrderFilter{}); return err }
		}},
		{"FindPendingOrders", func() func() error {
			return func() error { _, err := e.orders.FindPendingOrders(as(risk)); return err }
		}},
		{"FindTrades", func() func() error {
			return func() error { _, _, err := e.portfolio.FindTrades(as(trader), trading.TradeFilter{}); return err }
		}},
		{"Positions", func() func() error {
			return func() error { _, err := e.portfolio.Positions(ctx, trader.ID); return err }
		}},
		{"Summary", func() func() error {
			return func() error { _, err := e.portfolio.Summary(ctx, trader.ID); return err }
		}},
	}
	// every returns the calls of every case, each with what it needs.
	every := func() []func() error {
		calls := make([]func() error, len(cases))
		for i, c := range cases {
			calls[i] = c.setup()
		}
		return calls
	}
	for _, c := range cases {
		// A new pool whose one connection has prepared every statement.
		e.db.Close()
		if e.db, err = postgres.Open(ctx, postgres.Config{URL: dsn, MinConns: 1, MaxConns: 1}); err != nil {
			t.Fatal(err)
		}
		services()
		for i, call := range every() {
			if err := call(); err != nil {
				t.Fatalf("before the change, %s: %v", cases[i].name, err)
			}
		}
		call := c.setup()
		changeTypes()
		if err := call(); err != nil {
			t.Errorf("%s, the first call after a column type change: %v", c.name, err)
		}
	}

	pos, err := e.portfolio.Positions(ctx, trader.ID)
	if err != nil || len(pos) != 1 {
		t.Fatalf("positions = %v, %v", pos, err)
	}
	// One buy of 1 at 100.5 approved per case and round: the numbers survived the changes.
	eq(t, "average entry price", pos[0].AvgEntryPrice.Decimal, "100.5")
	if pos[0].Quantity.IsZero() || !pos[0].Quantity.Equal(pos[0].Quantity.Round(0)) {
		t.Errorf("quantity = %s, want a whole number of buys", pos[0].Quantity)
	}
}
