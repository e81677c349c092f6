package metrics

import (
	"context"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

// orderService counts decisions and trades around a trading.OrderService.
type orderService struct {
	trading.OrderService
	m *Metrics
}

// OrderService decorates next: a successful ApproveOrder counts trades_total[symbol,side],
// adds the trade's realized P&L to trades_pnl_total[symbol] and counts
// orders_approved_total[symbol]; a successful RejectOrder counts orders_rejected_total;
// both observe order_processing_time_seconds[status] from the order's creation to its
// decision. Submissions, approvals and rejections mark the business gauges stale
// (BookChanged). Everything else passes through.
func (m *Metrics) OrderService(next trading.OrderService) trading.OrderService {
	return &orderService{OrderService: next, m: m}
}

func (s *orderService) CreateOrder(ctx context.Context, n trading.NewOrder) (*trading.Order, bool, error) {
	o, created, err := s.OrderService.CreateOrder(ctx, n)
	if err == nil && created {
		s.m.BookChanged()
	}
	return o, created, err
}

func (s *orderService) ApproveOrder(ctx context.Context, id uuid.UUID) (*trading.Order, *trading.Trade, error) {
	o, t, err := s.OrderService.ApproveOrder(ctx, id)
	if err == nil && o != nil {
		s.m.BookChanged()
		s.m.OrderDecided(o)
		if t != nil {
			s.m.TradeExecuted(t)
		}
	}
	return o, t, err
}

func (s *orderService) RejectOrder(ctx context.Context, id uuid.UUID, reason string) (*trading.Order, error) {
	o, err := s.OrderService.RejectOrder(ctx, id, reason)
	if err == nil && o != nil {
		s.m.BookChanged()
		s.m.OrderDecided(o)
	}
	return o, err
}

// BookChanged says that this process changed orders or positions (a submission, an
// approval, a rejection): the business gauges are read from the database again on the next
// scrape instead of at the end of their 5 seconds. Other replicas catch up within those.
func (m *Metrics) BookChanged() { m.bookGen.Add(1) }

// OrderDecided counts an approved or rejected order (for callers that do not use the
// decorator).
func (m *Metrics) OrderDecided(o *trading.Order) {
	switch o.Status {
	case trading.StatusApproved:
		m.ordersApproved.WithLabelValues(o.Symbol).Inc()
	case trading.StatusRejected:
		m.ordersRejected.WithLabelValues(o.Symbol).Inc()
	default:
		return
	}
	if o.DecidedAt != nil {
		if d := o.DecidedAt.Sub(o.CreatedAt); d >= 0 {
			m.orderProcessing.WithLabelValues(string(o.Status)).Observe(d.Seconds())
		}
	}
}

// TradeExecuted counts a trade and its realized P&L.
func (m *Metrics) TradeExecuted(t *trading.Trade) {
	m.trades.WithLabelValues(t.Symbol, string(t.Side)).Inc()
	// Metrics are floats by nature; the money itself stays decimal in the database.
	m.tradesPnL.WithLabelValues(t.Symbol).Add(t.RealizedPnL.InexactFloat64())
}
