package postgres_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"golang.org/x/crypto/bcrypt"

	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

func openDB(t testing.TB, dsn string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), postgres.Config{URL: dsn, MinConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// env is a migrated database with the services and four users.
type env struct {
	db                      *postgres.DB
	users                   *postgres.UserService
	sessions                *postgres.SessionService
	orders                  *postgres.OrderService
	portfolio               *postgres.PortfolioService
	trader1, trader2, risk1 *trading.User
	admin                   *trading.User
}

func newEnv(t *testing.T, cfg postgres.OrderServiceConfig) *env { return newEnvCfg(t, cfg) }

func newEnvTB(tb testing.TB) *env { return newEnvCfg(tb, postgres.OrderServiceConfig{}) }

func newEnvCfg(t testing.TB, cfg postgres.OrderServiceConfig) *env {
	t.Helper()
	db := openDB(t, pgtest.NewMigratedDatabase(t))
	e := &env{
		db:        db,
		users:     postgres.NewUserService(db),
		sessions:  postgres.NewSessionService(db),
		orders:    postgres.NewOrderService(db, cfg),
		portfolio: postgres.NewPortfolioService(db),
	}
	mk := func(name string, role trading.Role) *trading.User { return e.addUser(t, name, role) }
	e.trader1 = mk("trader1", trading.RoleTrader)
	e.trader2 = mk("trader2", trading.RoleTrader)
	e.risk1 = mk("risk1", trading.RoleRisk)
	e.admin = mk("admin", trading.RoleAdmin)
	return e
}

var sharedHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("shared-test-password"), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return h
})

func as(u *trading.User) context.Context {
	return trading.NewContextWithPrincipal(context.Background(),
		trading.Principal{UserID: u.ID, Username: u.Username, Roles: u.Roles})
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func newOrder(symbol string, side trading.Side, qty, price, clientID string) trading.NewOrder {
	return trading.NewOrder{Symbol: symbol, Side: side, Quantity: dec(qty), Price: dec(price), ClientOrderID: clientID}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := trading.ErrorCode(err); got != code {
		t.Fatalf("error code = %q (%v), want %q", got, err, code)
	}
}

func wantField(t *testing.T, err error, field string) {
	t.Helper()
	wantCode(t, err, trading.EINVALID)
	for _, f := range trading.ErrorFields(err) {
		if f.Field == field {
			return
		}
	}
	t.Fatalf("error %v has no field %q", err, field)
}

// create submits an order as u and fails the test on error.
func (e *env) create(t *testing.T, u *trading.User, o trading.NewOrder) *trading.Order {
	t.Helper()
	order, created, err := e.orders.CreateOrder(as(u), o)
	if err != nil {
		t.Fatalf("create order: %v", err)
	}
	if !created {
		t.Fatalf("create order: created = false for a new order")
	}
	return order
}

// trade submits an order as u and has risk1 approve it.
func (e *env) trade(t *testing.T, u *trading.User, side trading.Side, symbol, qty, price string) *trading.Trade {
	t.Helper()
	o := e.create(t, u, newOrder(symbol, side, qty, price, ""))
	_, tr, err := e.orders.ApproveOrder(as(e.risk1), o.ID)
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	return tr
}

func (e *env) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.Pool().QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func eq(t *testing.T, what string, got decimal.Decimal, want string) {
	t.Helper()
	if !got.Equal(dec(want)) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

func postgresCfg() postgres.OrderServiceConfig { return postgres.OrderServiceConfig{} }

// addUser inserts a user with one shared hash: bcrypt under -race costs seconds, and TestUsers
// covers CreateUser itself.
func (e *env) addUser(t testing.TB, name string, role trading.Role) *trading.User {
	t.Helper()
	var id uuid.UUID
	err := e.db.Pool().QueryRow(context.Background(),
		`INSERT INTO users (username, password_hash, roles) VALUES ($1, $2, $3) RETURNING id`,
		name, string(sharedHash()), []string{string(role)}).Scan(&id)
	if err != nil {
		t.Fatalf("create user %s: %v", name, err)
	}
	u, err := e.users.FindUserByID(context.Background(), id)
	if err != nil {
		t.Fatalf("find user %s: %v", name, err)
	}
	return u
}
