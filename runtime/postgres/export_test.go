package postgres

import (
	"context"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

// Test access to the batched insert of orders (the external tests hold the database).

type OrderInsert struct {
	ID, UserID    uuid.UUID
	ClientOrderID *string
	Order         trading.NewOrder
}

type InsertedOrder struct {
	Order *trading.Order
	Err   error
}

// InsertOrders runs insertOrders, or with oneStatement its single statement alone.
func (s *OrderService) InsertOrders(ctx context.Context, in []OrderInsert, oneStatement bool) ([]InsertedOrder, error) {
	batch := make([]orderInsert, len(in))
	for i, o := range in {
		batch[i] = orderInsert{id: o.ID, userID: o.UserID, clientOrderID: o.ClientOrderID, order: o.Order}
	}
	run := s.insertOrders
	if oneStatement {
		run = s.insertOrderRows
	}
	got, err := run(ctx, batch)
	out := make([]InsertedOrder, len(got))
	for i, r := range got {
		out[i] = InsertedOrder{Order: r.order, Err: r.err}
	}
	return out, err
}

type Approval struct {
	OrderID  uuid.UUID
	Approver trading.Principal
}

type Approved struct {
	Order *trading.Order
	Trade *trading.Trade
	Err   error
}

// ApproveBatch runs approveBatch: the approvals as one batch.
func (s *OrderService) ApproveBatch(ctx context.Context, in []Approval) ([]Approved, error) {
	batch := make([]approval, len(in))
	for i, a := range in {
		batch[i] = approval{orderID: a.OrderID, approver: a.Approver}
	}
	got, err := s.approveBatch(ctx, batch)
	out := make([]Approved, len(got))
	for i, r := range got {
		out[i] = Approved{Order: r.order, Trade: r.trade, Err: r.err}
	}
	return out, err
}

// SetBatch bounds the pruner's batches (sessions, tokens) and drops its pause between them,
// so that a test's backlog takes many batches.
func (p *SessionPruner) SetBatch(sessions, tokens int) {
	p.batchSessions, p.batchTokens, p.pause = sessions, tokens, 0
}

// SetPause sets the pruner's pause between batches.
func (p *SessionPruner) SetPause(d time.Duration) { p.pause = d }
