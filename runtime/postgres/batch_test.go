package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// orderInserts counts the INSERT statements into orders that reach the database.
type orderInserts struct{ n atomic.Int64 }

func (c *orderInserts) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "INSERT INTO orders") {
		c.n.Add(1)
	}
	return ctx
}

func (c *orderInserts) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Concurrent submissions share INSERT statements (batches), and every submitter gets exactly
// its own order back: its user, symbol, side, quantity, price and client order id, stored
// once. A mix-up of rows between the callers of one batch would fail here.
func TestConcurrentSubmissionsAreBatched(t *testing.T) {
	t.Parallel()
	var inserts orderInserts
	db, err := postgres.Open(context.Background(), postgres.Config{URL: pgtest.NewMigratedDatabase(t), MinConns: 1, Tracer: &inserts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	e := &env{db: db, users: postgres.NewUserService(db), orders: postgres.NewOrderService(db, postgres.OrderServiceConfig{})}
	users := []*trading.User{e.addUser(t, "t1", trading.RoleTrader), e.addUser(t, "t2", trading.RoleTrader),
		e.addUser(t, "t3", trading.RoleTrader), e.addUser(t, "t4", trading.RoleTrader)}
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
