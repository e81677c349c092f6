package postgres_test

import (
	"context"
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
)

func position(t *testing.T, e *env, u *trading.User, symbol string) *trading.PositionView {
	t.Helper()
	views, err := e.portfolio.Positions(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := range views {
		if views[i].Quantity.IsZero() {
			t.Errorf("flat position %s listed", views[i].Symbol)
		}
		if views[i].Symbol == symbol {
			return &views[i]
		}
	}
	return nil
}

func TestPositionsAverageCost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())

	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "100", "150")
	tr := e.trade(t, e.trader1, trading.Buy, "BTC/USD", "100", "160")
	eq(t, "realized of an opening trade", tr.RealizedPnL.Decimal, "0")
	p := position(t, e, e.trader1, "BTC/USD")
	if p == nil {
		t.Fatal("no BTC/USD position")
	}
	eq(t, "quantity", p.Quantity.Decimal, "200")
	eq(t, "avg entry", p.AvgEntryPrice.Decimal, "155")
	eq(t, "mark", p.MarkPrice.Decimal, "160")
	eq(t, "market value", p.MarketValue.Decimal, "32000")
	eq(t, "unrealized", p.UnrealizedPnL.Decimal, "1000")

	tr = e.trade(t, e.trader1, trading.Sell, "BTC/USD", "100", "165")
	eq(t, "realized +", tr.RealizedPnL.Decimal, "1000")
	tr = e.trade(t, e.trader1, trading.Sell, "BTC/USD", "100", "145")
	eq(t, "realized -", tr.RealizedPnL.Decimal, "-1000")
	if p := position(t, e, e.trader1, "BTC/USD"); p != nil {
		t.Fatalf("flat position listed: %+v", p)
	}
	var realized string
	if err := e.db.Pool().QueryRow(context.Background(),
		`SELECT realized_pnl::text FROM positions WHERE user_id = $1 AND symbol = 'BTC/USD'`, e.trader1.ID).Scan(&realized); err != nil {
		t.Fatal(err)
	}
	eq(t, "stored realized of the flat position", dec(realized), "0")

	// Short crossing: long 10 @ 100, sell 30 @ 110 realizes 100 and opens short 20 @ 110.
	e.trade(t, e.trader1, trading.Buy, "ETH/USD", "10", "100")
	tr = e.trade(t, e.trader1, trading.Sell, "ETH/USD", "30", "110")
	eq(t, "crossing realized", tr.RealizedPnL.Decimal, "100")
	p = position(t, e, e.trader1, "ETH/USD")
	if p == nil {
		t.Fatal("no ETH/USD position")
	}
	eq(t, "short quantity", p.Quantity.Decimal, "-20")
	eq(t, "short avg", p.AvgEntryPrice.Decimal, "110")
	// Someone else's later trade moves the mark.
	e.trade(t, e.trader2, trading.Buy, "ETH/USD", "1", "105")
	p = position(t, e, e.trader1, "ETH/USD")
	eq(t, "mark from another user's trade", p.MarkPrice.Decimal, "105")
	eq(t, "short unrealized", p.UnrealizedPnL.Decimal, "100")
	eq(t, "short market value", p.MarketValue.Decimal, "-2100")

	// Summary of trader1: one open position (ETH short), realized 1000-1000+100 = 100.
	e.create(t, e.trader1, newOrder("BTC/USD", trading.Buy, "1", "1", ""))
	s, err := e.portfolio.Summary(context.Background(), e.trader1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s.PositionsCount != 1 || s.PendingOrders != 1 || s.TradesToday != 6 {
		t.Errorf("summary counters = positions %d pending %d trades %d, want 1 1 6",
			s.PositionsCount, s.PendingOrders, s.TradesToday)
	}
	eq(t, "summary realized", s.RealizedPnL.Decimal, "100")
	eq(t, "summary daily realized", s.DailyRealizedPnL.Decimal, "100")
	eq(t, "summary unrealized", s.UnrealizedPnL.Decimal, "100")
	eq(t, "summary gross", s.GrossExposure.Decimal, "2100")
	eq(t, "summary net", s.NetExposure.Decimal, "-2100")

	// Trades listing: own only, newest first, paginated.
	trades, next, err := e.portfolio.FindTrades(as(e.trader1), trading.TradeFilter{Limit: 4})
	if err != nil || len(trades) != 4 || next == "" {
		t.Fatalf("trades page 1 = %d, %q, %v", len(trades), next, err)
	}
	if trades[0].Symbol != "ETH/USD" || trades[0].Side != trading.Sell {
		t.Errorf("newest trade = %+v, want the ETH sell", trades[0])
	}
	rest, next2, err := e.portfolio.FindTrades(as(e.trader1), trading.TradeFilter{Limit: 4, Cursor: next})
	if err != nil || len(rest) != 2 || next2 != "" {
		t.Fatalf("trades page 2 = %d, %q, %v", len(rest), next2, err)
	}
	sym := "ETH/USD"
	eth, _, err := e.portfolio.FindTrades(as(e.trader1), trading.TradeFilter{Symbol: &sym})
	if err != nil || len(eth) != 2 {
		t.Fatalf("ETH trades = %d, %v", len(eth), err)
	}
	t2, _, err := e.portfolio.FindTrades(as(e.trader2), trading.TradeFilter{})
	if err != nil || len(t2) != 1 {
		t.Fatalf("trader2 sees %d trades, want its 1", len(t2))
	}
	_, _, err = e.portfolio.FindTrades(as(e.trader1), trading.TradeFilter{Cursor: "%%%"})
	wantField(t, err, "cursor")
	_, _, err = e.portfolio.FindTrades(context.Background(), trading.TradeFilter{})
	wantCode(t, err, trading.EUNAUTHORIZED)
}

// TestLargeValuesDoNotOverflow: a trade at the limits realizes about 1e12, more than
// NUMERIC(20,8) holds.
func TestLargeValuesDoNotOverflow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	e.trade(t, e.trader1, trading.Buy, "BTC/USD", "1000000", "1000000")
	tr := e.trade(t, e.trader1, trading.Sell, "BTC/USD", "1000000", "0.00000001")
	eq(t, "realized", tr.RealizedPnL.Decimal, "-999999999999.99")
	s, err := e.portfolio.Summary(context.Background(), e.trader1.ID)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "daily realized", s.DailyRealizedPnL.Decimal, "-999999999999.99")
}

// TestNumberAboveColumnRangeIsInvalid: a price beyond NUMERIC(20,8) (a MAX_PRICE set too high)
// is a 422, not a 500.
func TestNumberAboveColumnRangeIsInvalid(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	_, _, err := e.orders.CreateOrder(as(e.trader1), newOrder("BTC/USD", trading.Buy, "1", "1000000000000", ""))
	wantCode(t, err, trading.EINVALID)
}
