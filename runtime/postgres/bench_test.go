package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

// Benchmarks of the write paths against their floor, a single-row insert through the same pool
// (16 concurrent clients on 2 cores). Not run by `make test`; e.g.
//
//	hack/services.sh go test -run XXX -bench . -benchtime 2000x ./runtime/postgres/
func BenchmarkRawInsert(b *testing.B) {
	e := newBenchEnv(b)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.db.Pool().Exec(context.Background(), `
				INSERT INTO orders (symbol, side, quantity, price, requested_by) VALUES ('BTC/USD', 'buy', 1, 100, $1)`,
				e.trader1.ID); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkCreateOrder(b *testing.B) {
	e := newBenchEnv(b)
	ctx := as(e.trader1)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := e.orders.CreateOrder(ctx, newOrder("BTC/USD", trading.Buy, "1", "100", "")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkApproveOrder(b *testing.B) {
	e := newBenchEnv(b)
	ids := make(chan uuid.UUID, b.N)
	// Spread over 16 (user, symbol) positions: approvals of one user and symbol serialize on
	// the position row by design (its lock is held until the commit is durable).
	var traders []*trading.User
	for i := range 8 {
		traders = append(traders, e.addUser(b, fmt.Sprintf("bench%d", i), trading.RoleTrader))
	}
	symbols := []string{"BTC/USD", "ETH/USD"}
	for i := range b.N {
		u, sym := traders[i%len(traders)], symbols[(i/len(traders))%len(symbols)]
		o, _, err := e.orders.CreateOrder(as(u), newOrder(sym, trading.Buy, "1", "100", ""))
		if err != nil {
			b.Fatal(err)
		}
		ids <- o.ID
	}
	close(ids)
	ctx := as(e.risk1)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := e.orders.ApproveOrder(ctx, <-ids); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func newBenchEnv(b *testing.B) *env { return newEnvTB(b) }
