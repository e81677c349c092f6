package postgres

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
)

// PortfolioService implements trading.PortfolioService: trades, positions and the summary.
type PortfolioService struct{ db *DB }

var _ trading.PortfolioService = (*PortfolioService)(nil)

// NewPortfolioService returns the portfolio reader.
func NewPortfolioService(db *DB) *PortfolioService { return &PortfolioService{db: db} }

const tradeColumns = `id, order_id, user_id, symbol, side, quantity, price, realized_pnl, executed_at`

func scanTrade(row pgx.Row) (*trading.Trade, error) {
	var (
		t    trading.Trade
		side string
	)
	err := row.Scan(&t.ID, &t.OrderID, &t.UserID, &t.Symbol, &side, num(&t.Quantity.Decimal), num(&t.Price.Decimal),
		num(&t.RealizedPnL.Decimal), &t.ExecutedAt)
	if err != nil {
		return nil, err
	}
	t.Side = trading.Side(side)
	t.Quantity.Set, t.Price.Set, t.RealizedPnL.Set = true, true, true
	t.ExecutedAt = t.ExecutedAt.UTC()
	return &t, nil
}

// FindTrades lists the caller's own trades newest first, keyset-paginated on
// (executed_at DESC, id DESC).
func (s *PortfolioService) FindTrades(ctx context.Context, f trading.TradeFilter) ([]*trading.Trade, string, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, "", err
	}
	page, err := newKeysetPage(f.Limit, f.Cursor)
	if err != nil {
		return nil, "", err
	}
	var w where
	w.add("user_id = ?", p.UserID)
	if f.Symbol != nil {
		w.add("symbol = ?", *f.Symbol)
	}
	if page.after != nil {
		w.add("(executed_at, id) < (?, ?)", page.after.at, page.after.id)
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	// Planned with its values on every call, as FindOrders is: with a symbol, the generic plan
	// walks the user's trades newest first and filters on the symbol, and for a user with
	// many trades and few (or none) in that symbol it read all of them per page
	// (TestTradeListingsArePlannedWithTheirValues).
	args := append([]any{pgx.QueryExecModeCacheDescribe}, w.args...)
	rows, err := s.db.pool.Query(ctx, `SELECT `+tradeColumns+` FROM trades`+w.String()+page.sql("executed_at"), args...)
	if err != nil {
		return nil, "", s.db.mapError(err)
	}
	defer rows.Close()
	trades := []*trading.Trade{}
	for rows.Next() {
		t, err := scanTrade(rows)
		if err != nil {
			return nil, "", s.db.mapError(err)
		}
		trades = append(trades, t)
	}
	if err := rows.Err(); err != nil {
		return nil, "", s.db.mapError(err)
	}
	trades, next := trimPage(page, trades, func(t *trading.Trade) (time.Time, uuid.UUID) { return t.ExecutedAt, t.ID })
	return trades, next, nil
}

// Positions returns userID's non-flat positions valued at the mark: the book and the marks
// of its symbols, valued by trading.Book as the cache values them. The caller (HTTP layer or
// cache) passes the authenticated user's id; this method does not read the principal so that
// a cache can key on userID alone.
func (s *PortfolioService) Positions(ctx context.Context, userID uuid.UUID) ([]trading.PositionView, error) {
	b, marks, err := s.valued(ctx, userID, false)
	if err != nil {
		return nil, err
	}
	return b.Views(marks, false), nil
}

// Summary returns userID's summary: the book (positions and the day's counters, read in
// one snapshot so that they agree) valued at the marks of its open positions.
func (s *PortfolioService) Summary(ctx context.Context, userID uuid.UUID) (*trading.Summary, error) {
	b, marks, err := s.valued(ctx, userID, true)
	if err != nil {
		return nil, err
	}
	sum := b.Summary(marks)
	return &sum, nil
}

// valued reads userID's book and the marks of its open positions.
func (s *PortfolioService) valued(ctx context.Context, userID uuid.UUID, summary bool) (*trading.Book, trading.Marks, error) {
	b, err := s.Book(ctx, userID, summary)
	if err != nil {
		return nil, nil, err
	}
	var symbols []string
	for _, p := range b.Positions {
		if !p.Quantity.IsZero() {
			symbols = append(symbols, p.Symbol)
		}
	}
	if len(symbols) == 0 {
		return b, trading.Marks{}, nil
	}
	marks, err := s.Marks(ctx, symbols)
	return b, marks, err
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var _ trading.BookReader = (*PortfolioService)(nil)

// Book reads userID's book (trading.Book): the open positions, or with summary every
// position and the day's counters, in one REPEATABLE READ snapshot. The cache keeps it and
// values it at marks it keeps per symbol.
func (s *PortfolioService) Book(ctx context.Context, userID uuid.UUID, summary bool) (*trading.Book, error) {
	var b trading.Book
	read := func(ctx context.Context, q querier) error {
		rows, err := q.Query(ctx, `
			SELECT symbol, quantity, avg_entry_price, realized_pnl, updated_at FROM positions
			WHERE user_id = $1 AND ($2 OR quantity <> 0)
			ORDER BY symbol`, userID, summary)
		if err != nil {
			return err
		}
		defer rows.Close()
		b.Positions = []trading.Position{}
		for rows.Next() {
			pos := trading.Position{UserID: userID}
			if err := rows.Scan(&pos.Symbol, num(&pos.Quantity), num(&pos.AvgEntryPrice), num(&pos.RealizedPnL), &pos.UpdatedAt); err != nil {
				return err
			}
			pos.UpdatedAt = pos.UpdatedAt.UTC()
			b.Positions = append(b.Positions, pos)
		}
		return rows.Err()
	}
	if !summary {
		ctx, cancel := s.db.bound(ctx)
		defer cancel()
		if err := read(ctx, s.db.pool); err != nil {
			return nil, s.db.mapError(err)
		}
		return &b, nil
	}
	err := s.db.inTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(ctx context.Context, tx pgx.Tx) error {
			if err := read(ctx, tx); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `
				SELECT COALESCE(SUM(realized_pnl), 0), count(*),
					(SELECT count(*) FROM orders WHERE requested_by = $1 AND status = 'pending'),
					`+startOfDayUTC+`
				FROM trades
				WHERE user_id = $1 AND executed_at >= `+startOfDayUTC, userID).
				Scan(num(&b.DailyRealized), &b.TradesToday, &b.PendingOrders, &b.Day)
		})
	if err != nil {
		return nil, err
	}
	b.Day = b.Day.UTC()
	return &b, nil
}

// Marks reads the marks of symbols: one index probe per symbol on trades
// (symbol, executed_at DESC, id DESC); id breaks ties of trades executed in the same
// microsecond.
func (s *PortfolioService) Marks(ctx context.Context, symbols []string) (trading.Marks, error) {
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	rows, err := s.db.pool.Query(ctx, `
		SELECT s.symbol, m.price
		FROM unnest($1::text[]) AS s(symbol)
		CROSS JOIN LATERAL (
			SELECT t.price FROM trades t
			WHERE t.symbol = s.symbol
			ORDER BY t.executed_at DESC, t.id DESC
			LIMIT 1
		) m`, symbols)
	if err != nil {
		return nil, s.db.mapError(err)
	}
	defer rows.Close()
	marks := make(trading.Marks, len(symbols))
	for rows.Next() {
		var (
			symbol string
			price  decimal.Decimal
		)
		if err := rows.Scan(&symbol, num(&price)); err != nil {
			return nil, s.db.mapError(err)
		}
		marks[symbol] = price
	}
	return marks, s.db.mapError(rows.Err())
}
