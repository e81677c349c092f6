package trading

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

// Trade is the execution of an approved order, in full, at the order's price.
type Trade struct {
	ID          uuid.UUID `json:"id"`
	OrderID     uuid.UUID `json:"order_id"`
	UserID      uuid.UUID `json:"-"`
	Symbol      string    `json:"symbol"`
	Side        Side      `json:"side"`
	Quantity    Amount    `json:"quantity"`
	Price       Amount    `json:"price"`
	RealizedPnL Amount    `json:"realized_pnl"`
	ExecutedAt  time.Time `json:"executed_at"`
}

// Position is what a user holds of a symbol: a signed quantity (negative is short), the
// average entry price of the open quantity, and the P&L realized so far.
type Position struct {
	UserID        uuid.UUID       `json:"-"`
	Symbol        string          `json:"symbol"`
	Quantity      decimal.Decimal `json:"quantity"`
	AvgEntryPrice decimal.Decimal `json:"avg_entry_price"`
	RealizedPnL   decimal.Decimal `json:"realized_pnl"`
	UpdatedAt     time.Time       `json:"updated_at"`
}

// AvgScale is the number of fractional digits the average entry price is kept to (it is
// shown to Scale). Rounded to Scale, a position bought 1 at 100 and 2 at 101 and sold 3 at
// 101 realized 0.99999999 for the 1.00000000 it made: a mean of prices is seldom a short
// decimal, and the rounding error is multiplied by the quantity closed. Kept to 20 digits,
// the error stays below the 8th digit for any quantity under MaxAmount.
const AvgScale = 20

// ApplyTrade returns the position after a trade of qty at price on side, and the P&L the
// trade realized, by the average-cost method:
//   - in the direction of the position (or from flat) the average entry price moves to the
//     quantity-weighted mean, rounded to AvgScale digits;
//   - against it, the closed quantity realizes (price - avg) * closed for a long, the mirror
//     for a short, rounded to Scale (the trade's realized_pnl), and the average stays;
//   - a trade that crosses zero closes the old side and opens the remainder at price.
//
// qty must be positive. Pure, so that the database transaction and the tests share it.
func ApplyTrade(p Position, side Side, qty, price decimal.Decimal) (Position, decimal.Decimal) {
	signed := qty
	if side == Sell {
		signed = qty.Neg()
	}
	realized := decimal.Zero
	newQty := p.Quantity.Add(signed)

	switch {
	case p.Quantity.IsZero() || p.Quantity.Sign() == signed.Sign():
		cost := p.Quantity.Abs().Mul(p.AvgEntryPrice).Add(qty.Mul(price))
		p.AvgEntryPrice = cost.DivRound(newQty.Abs(), AvgScale)
	default:
		closed := decimal.Min(p.Quantity.Abs(), qty)
		if p.Quantity.IsPositive() {
			realized = price.Sub(p.AvgEntryPrice).Mul(closed)
		} else {
			realized = p.AvgEntryPrice.Sub(price).Mul(closed)
		}
		realized = realized.Round(Scale)
		switch {
		case newQty.IsZero():
			p.AvgEntryPrice = decimal.Zero
		case newQty.Sign() != p.Quantity.Sign():
			p.AvgEntryPrice = price // crossed zero: the remainder opens at the trade price
		}
	}
	p.Quantity = newQty
	p.RealizedPnL = p.RealizedPnL.Add(realized)
	return p, realized
}

// UnrealizedPnL is (mark - avg) * quantity; for a short the negative quantity makes it
// (avg - mark) * |quantity|.
func UnrealizedPnL(p Position, mark decimal.Decimal) decimal.Decimal {
	return mark.Sub(p.AvgEntryPrice).Mul(p.Quantity)
}

// PositionView is a position as GET /api/positions shows it, valued at the mark price
// (the price of the symbol's latest trade by anyone).
type PositionView struct {
	Symbol        string    `json:"symbol"`
	Quantity      Amount    `json:"quantity"`
	AvgEntryPrice Amount    `json:"avg_entry_price"`
	MarkPrice     Amount    `json:"mark_price"`
	MarketValue   Amount    `json:"market_value"`
	UnrealizedPnL Amount    `json:"unrealized_pnl"`
	RealizedPnL   Amount    `json:"realized_pnl"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// ViewPosition values p at mark.
func ViewPosition(p Position, mark decimal.Decimal) PositionView {
	return PositionView{
		Symbol:        p.Symbol,
		Quantity:      Amount{Decimal: p.Quantity, Set: true},
		AvgEntryPrice: Amount{Decimal: p.AvgEntryPrice, Set: true},
		MarkPrice:     Amount{Decimal: mark, Set: true},
		// Rounded to the Scale they are shown at, here rather than only when written, so that
		// the summary's totals are the sums of the figures the positions show (0.5 at a mark
		// of 0.00000003 is worth 0.000000015, shown as 0.00000002).
		MarketValue:   Amount{Decimal: p.Quantity.Mul(mark).Round(Scale), Set: true},
		UnrealizedPnL: Amount{Decimal: UnrealizedPnL(p, mark).Round(Scale), Set: true},
		RealizedPnL:   Amount{Decimal: p.RealizedPnL, Set: true},
		UpdatedAt:     p.UpdatedAt,
	}
}

// Summary is a user's book at a glance (GET /api/summary).
type Summary struct {
	PositionsCount   int    `json:"positions_count"`
	GrossExposure    Amount `json:"gross_exposure"`
	NetExposure      Amount `json:"net_exposure"`
	RealizedPnL      Amount `json:"realized_pnl"`
	UnrealizedPnL    Amount `json:"unrealized_pnl"`
	DailyRealizedPnL Amount `json:"daily_realized_pnl"`
	PendingOrders    int    `json:"pending_orders"`
	TradesToday      int    `json:"trades_today"`
}

// Summarize folds valued positions into the summary's money fields; the counters of the
// day come from the store.
func Summarize(views []PositionView, dailyRealized decimal.Decimal, pending, tradesToday int) Summary {
	gross, net, realized, unrealized := decimal.Zero, decimal.Zero, decimal.Zero, decimal.Zero
	count := 0
	for _, v := range views {
		if !v.Quantity.IsZero() {
			count++
		}
		gross = gross.Add(v.MarketValue.Abs())
		net = net.Add(v.MarketValue.Decimal)
		realized = realized.Add(v.RealizedPnL.Decimal)
		unrealized = unrealized.Add(v.UnrealizedPnL.Decimal)
	}
	amt := func(d decimal.Decimal) Amount { return Amount{Decimal: d, Set: true} }
	return Summary{
		PositionsCount:   count,
		GrossExposure:    amt(gross),
		NetExposure:      amt(net),
		RealizedPnL:      amt(realized),
		UnrealizedPnL:    amt(unrealized),
		DailyRealizedPnL: amt(dailyRealized),
		PendingOrders:    pending,
		TradesToday:      tradesToday,
	}
}

// TradeFilter selects the caller's trades, newest first, with keyset pagination.
type TradeFilter struct {
	Symbol *string
	Limit  int
	Cursor string
}

// PortfolioService reads a user's trades, positions and summary. Positions and summary
// are what the cache (runtime/redis) wraps; they take the user explicitly so that the
// cache key is the user and not the request.
type PortfolioService interface {
	// FindTrades lists the caller's own trades newest first and the next cursor.
	FindTrades(ctx context.Context, f TradeFilter) ([]*Trade, string, error)
	// Positions returns userID's open positions valued at the mark (flat ones omitted).
	Positions(ctx context.Context, userID uuid.UUID) ([]PositionView, error)
	// Summary returns userID's summary.
	Summary(ctx context.Context, userID uuid.UUID) (*Summary, error)
}

// Views names a user's cached read views. A change says which of them it made stale, so
// that a cache drops only those: a submission or a rejection changes the summary's
// pending_orders but not the positions, an approval changes both.
type Views uint8

const (
	ViewPositions Views = 1 << iota
	ViewSummary
	// AllViews is every view (an approval: a trade moved a position).
	AllViews = ViewPositions | ViewSummary
)

// Invalidator is told, before an order change returns, that some of a user's cached views
// are stale. It is the seam between the order workflow and a read cache; without a cache
// it is nil.
type Invalidator interface {
	// InvalidateUser says that userID's stale views changed (a submission, a rejection).
	InvalidateUser(ctx context.Context, userID uuid.UUID, stale Views) error
	// InvalidateTrade says that a trade of userID in symbol executed: every view of userID
	// changed, and so did the mark of symbol, for everyone who holds it.
	InvalidateTrade(ctx context.Context, userID uuid.UUID, symbol string) error
}

// ErrNotAcknowledged is wrapped by an announcement to the other replicas (an invalidation, an
// ended login) that went out but that not every replica acknowledged in time (one frozen or
// partitioned): sending it again would wait for the same replica.
var ErrNotAcknowledged = errors.New("not every replica acknowledged in time")

// Book is what a user's positions and summary are computed from, apart from the marks: the
// positions (the open ones for GET /api/positions; all of them for the summary, whose
// realized P&L counts positions closed since) and the summary's counters of the day, read
// in one snapshot. A cache keeps books per user and marks per symbol: a trade changes the
// book of one user but the mark of its symbol for every holder.
type Book struct {
	Positions     []Position      `json:"positions"`
	DailyRealized decimal.Decimal `json:"daily_realized"`
	PendingOrders int             `json:"pending_orders"`
	TradesToday   int             `json:"trades_today"`
	// Day is the UTC day (its midnight) that DailyRealized and TradesToday count, as the
	// database's clock had it; zero in a book read without the summary. A cache serves a
	// summary only on its day: at midnight the counters start again from zero.
	Day time.Time `json:"day,omitzero"`
}

// StartOfDay is the midnight (UTC) that begins t's UTC day.
func StartOfDay(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

// Marks are mark prices by symbol: the price of the symbol's latest trade by anyone.
type Marks map[string]decimal.Decimal

// MarkOf is the mark of p's symbol in marks; a symbol without trades (only possible when
// trades were deleted by hand: a position exists through a trade) is marked at p's entry.
func (m Marks) MarkOf(p Position) decimal.Decimal {
	if mark, ok := m[p.Symbol]; ok {
		return mark
	}
	return p.AvgEntryPrice
}

// Views values b's positions at marks; flat positions only with includeFlat.
func (b *Book) Views(marks Marks, includeFlat bool) []PositionView {
	views := make([]PositionView, 0, len(b.Positions))
	for _, p := range b.Positions {
		if includeFlat || !p.Quantity.IsZero() {
			views = append(views, ViewPosition(p, marks.MarkOf(p)))
		}
	}
	return views
}

// Summary is the summary of b at marks.
func (b *Book) Summary(marks Marks) Summary {
	return Summarize(b.Views(marks, true), b.DailyRealized, b.PendingOrders, b.TradesToday)
}

// BookReader reads books and marks (runtime/postgres); the cache (runtime/cache) builds
// positions and summaries from them.
type BookReader interface {
	// Book returns userID's book: the open positions, or with summary every position and
	// the counters too.
	Book(ctx context.Context, userID uuid.UUID, summary bool) (*Book, error)
	// Marks returns the marks of symbols (a symbol without trades is left out).
	Marks(ctx context.Context, symbols []string) (Marks, error)
}
