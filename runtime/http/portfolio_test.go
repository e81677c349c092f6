package http_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

type position struct {
	Symbol        string `json:"symbol"`
	Quantity      string `json:"quantity"`
	AvgEntryPrice string `json:"avg_entry_price"`
	MarkPrice     string `json:"mark_price"`
	MarketValue   string `json:"market_value"`
	UnrealizedPnL string `json:"unrealized_pnl"`
	RealizedPnL   string `json:"realized_pnl"`
	UpdatedAt     string `json:"updated_at"`
}

type summary struct {
	PositionsCount   int    `json:"positions_count"`
	GrossExposure    string `json:"gross_exposure"`
	NetExposure      string `json:"net_exposure"`
	RealizedPnL      string `json:"realized_pnl"`
	UnrealizedPnL    string `json:"unrealized_pnl"`
	DailyRealizedPnL string `json:"daily_realized_pnl"`
	PendingOrders    int    `json:"pending_orders"`
	TradesToday      int    `json:"trades_today"`
}

func (e *env) positions(tok string) map[string]position {
	e.t.Helper()
	r := e.do("GET", "/api/positions", tok, nil).want(200)
	var l struct {
		Positions []position `json:"positions"`
	}
	r.decode(&l)
	if l.Positions == nil {
		e.t.Fatalf("positions is not a list: %s", r.body)
	}
	m := map[string]position{}
	for _, p := range l.Positions {
		m[p.Symbol] = p
	}
	return m
}

func (e *env) summary(tok string) summary {
	e.t.Helper()
	r := e.do("GET", "/api/summary", tok, nil).want(200)
	var raw map[string]json.RawMessage
	r.decode(&raw)
	for _, k := range []string{"positions_count", "gross_exposure", "net_exposure", "realized_pnl", "unrealized_pnl", "daily_realized_pnl", "pending_orders", "trades_today"} {
		if _, ok := raw[k]; !ok {
			e.t.Errorf("summary without %q: %s", k, r.body)
		}
	}
	var s summary
	r.decode(&s)
	return s
}

func checkPosition(t *testing.T, p position, qty, avg, mark, value, unrealized, realized string) {
	t.Helper()
	decEq(t, p.Symbol+" quantity", p.Quantity, qty)
	decEq(t, p.Symbol+" avg_entry_price", p.AvgEntryPrice, avg)
	decEq(t, p.Symbol+" mark_price", p.MarkPrice, mark)
	decEq(t, p.Symbol+" market_value", p.MarketValue, value)
	decEq(t, p.Symbol+" unrealized_pnl", p.UnrealizedPnL, unrealized)
	decEq(t, p.Symbol+" realized_pnl", p.RealizedPnL, realized)
}

// Positions and summary after trades follow the average-cost maths of the spec, and each
// approve is visible in the requester's very next read (read-your-writes).
func TestPositionsAndSummary(t *testing.T) {
	t.Parallel()
	t.Run("uncached", func(t *testing.T) { t.Parallel(); testPositionsAndSummary(t, newEnv(t)) })
	// With the cache in front, as tradingd serves them: every read after a change is fresh,
	// another trader's trade moving the mark included.
	t.Run("cached", func(t *testing.T) {
		t.Parallel()
		testPositionsAndSummary(t, newEnv(t, func(o *envOptions) { o.cached = true }))
	})
}

func testPositionsAndSummary(t *testing.T, e *env) {
	e.addUser("trader1", trading.RoleTrader)
	e.addUser("trader2", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)
	t1, t2, risk := e.token("trader1"), e.token("trader2"), e.token("risk1")

	if len(e.positions(t1)) != 0 {
		t.Fatal("positions before any trade")
	}
	s := e.summary(t1)
	if s.PositionsCount != 0 || s.TradesToday != 0 {
		t.Errorf("empty summary %+v", s)
	}
	decEq(t, "empty gross", s.GrossExposure, "0")

	e.trade(t1, risk, "BTC/USD", "buy", "100", "150")
	checkPosition(t, e.positions(t1)["BTC/USD"], "100", "150", "150", "15000", "0", "0")

	e.trade(t1, risk, "BTC/USD", "buy", "100", "160")
	checkPosition(t, e.positions(t1)["BTC/USD"], "200", "155", "160", "32000", "1000", "0")

	sold := e.trade(t1, risk, "BTC/USD", "sell", "50", "170")
	decEq(t, "trade realized_pnl", sold.Trade.RealizedPnL, "750")
	checkPosition(t, e.positions(t1)["BTC/USD"], "150", "155", "170", "25500", "2250", "750")

	// The mark is the latest trade of the symbol by anyone.
	e.trade(t2, risk, "BTC/USD", "buy", "1", "180")
	checkPosition(t, e.positions(t1)["BTC/USD"], "150", "155", "180", "27000", "3750", "750")

	// A short: selling from flat, marked by another user's trade.
	e.trade(t1, risk, "ETH/USD", "sell", "10", "2000")
	checkPosition(t, e.positions(t1)["ETH/USD"], "-10", "2000", "2000", "-20000", "0", "0")
	e.trade(t2, risk, "ETH/USD", "buy", "1", "1900")
	checkPosition(t, e.positions(t1)["ETH/USD"], "-10", "2000", "1900", "-19000", "1000", "0")

	e.submit(t1, "XRP/USD", "buy", "1", "1") // pending: counted, no position
	s = e.summary(t1)
	if s.PositionsCount != 2 || s.PendingOrders != 1 || s.TradesToday != 4 {
		t.Errorf("summary counters %+v, want 2 positions, 1 pending, 4 trades today", s)
	}
	decEq(t, "gross_exposure 27000+19000", s.GrossExposure, "46000")
	decEq(t, "net_exposure 27000-19000", s.NetExposure, "8000")
	decEq(t, "realized_pnl", s.RealizedPnL, "750")
	decEq(t, "unrealized_pnl 3750+1000", s.UnrealizedPnL, "4750")
	decEq(t, "daily_realized_pnl", s.DailyRealizedPnL, "750")

	// Closing the short flat: realized (2000-1950)*10, and the flat position is omitted.
	e.trade(t1, risk, "ETH/USD", "buy", "10", "1950")
	pos := e.positions(t1)
	if _, ok := pos["ETH/USD"]; ok || len(pos) != 1 {
		t.Errorf("flat position shown: %+v", pos)
	}
	s = e.summary(t1)
	// The P&L realized by a position that is now flat still counts in the summary.
	decEq(t, "summary realized_pnl including the closed ETH position (750 + 500)", s.RealizedPnL, "1250")
	decEq(t, "daily realized after closing", s.DailyRealizedPnL, "1250")
	if s.PositionsCount != 1 || s.TradesToday != 5 {
		t.Errorf("summary %+v", s)
	}

	// Crossing zero: from long 150 @ 155, sell 200 @ 150 realizes (150-155)*150 and opens
	// a short of 50 at 150.
	crossed := e.trade(t1, risk, "BTC/USD", "sell", "200", "150")
	decEq(t, "crossing realized", crossed.Trade.RealizedPnL, "-750")
	checkPosition(t, e.positions(t1)["BTC/USD"], "-50", "150", "150", "-7500", "0", "0")

	// trader2's book is its own.
	p2 := e.positions(t2)
	if len(p2) != 2 {
		t.Errorf("trader2 positions %+v", p2)
	}
	checkPosition(t, p2["BTC/USD"], "1", "180", "150", "150", "-30", "0")

	// An average that is a repeating decimal is shown to 8 digits and kept to more: bought 1
	// at 100 and 2 at 101 (cost 302), the position is worth exactly 1 more at 101 and sold
	// there realizes exactly 1, not (101 - 100.66666667) * 3 = 0.99999999.
	e.trade(t2, risk, "XRP/USD", "buy", "1", "100")
	e.trade(t2, risk, "XRP/USD", "buy", "2", "101")
	sol := e.positions(t2)["XRP/USD"]
	if sol.AvgEntryPrice != "100.66666667" || sol.UnrealizedPnL != "1.00000000" {
		t.Errorf("XRP/USD avg %s unrealized %s, want 100.66666667 and 1.00000000", sol.AvgEntryPrice, sol.UnrealizedPnL)
	}
	if sold := e.trade(t2, risk, "XRP/USD", "sell", "3", "101"); sold.Trade.RealizedPnL != "1.00000000" {
		t.Errorf("XRP/USD closed: realized %s, want 1.00000000", sold.Trade.RealizedPnL)
	}
	if s := e.summary(t2); s.RealizedPnL != "1.00000000" {
		t.Errorf("trader2's realized_pnl %s, want 1.00000000", s.RealizedPnL)
	}
}

// recordingInvalidator is the cache seam seen from the API: which users it was told about.
type recordingInvalidator struct {
	mu      sync.Mutex
	users   []uuid.UUID
	views   []trading.Views
	symbols []string // of the trades
}

func (r *recordingInvalidator) InvalidateUser(_ context.Context, id uuid.UUID, stale trading.Views) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users = append(r.users, id)
	r.views = append(r.views, stale)
	return nil
}

func (r *recordingInvalidator) InvalidateTrade(ctx context.Context, id uuid.UUID, symbol string) error {
	r.mu.Lock()
	r.symbols = append(r.symbols, symbol)
	r.mu.Unlock()
	return r.InvalidateUser(ctx, id, trading.AllViews)
}

func (r *recordingInvalidator) calls() []uuid.UUID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uuid.UUID(nil), r.users...)
}

// Before an approve answers, the requester's cached views have been invalidated, so that a
// cache in front of positions and summary cannot serve the state before the trade.
func TestApproveInvalidatesRequester(t *testing.T) {
	t.Parallel()
	inv := &recordingInvalidator{}
	e := newEnv(t, func(o *envOptions) { o.invalidator = inv })
	traderID := e.addUser("trader1", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)
	trader, risk := e.token("trader1"), e.token("risk1")

	o := e.submit(trader, "BTC/USD", "buy", "1", "100")
	if len(inv.calls()) != 0 {
		t.Fatalf("invalidated before any approve: %v", inv.calls())
	}
	e.approve(risk, o.ID)
	calls := inv.calls()
	if len(calls) != 1 || calls[0].String() != traderID {
		t.Fatalf("invalidations %v, want exactly the requester %s once", calls, traderID)
	}
	inv.mu.Lock()
	views := inv.views[0]
	inv.mu.Unlock()
	if views != trading.AllViews {
		t.Fatalf("the approve invalidated views %b, want positions and summary (%b)", views, trading.AllViews)
	}
	inv.mu.Lock()
	symbols := inv.symbols
	inv.mu.Unlock()
	if len(symbols) != 1 || symbols[0] != "BTC/USD" {
		t.Fatalf("the approve named traded symbols %q, want BTC/USD (its mark moved)", symbols)
	}
	// A refused approve invalidates nothing.
	e.do("POST", "/api/orders/"+o.ID+"/approve", risk, nil).problem(409)
	rj := e.submit(trader, "BTC/USD", "buy", "1", "100")
	e.do("POST", "/api/orders/"+rj.ID+"/reject", risk, map[string]string{"reason": "no"}).want(200)
	if len(inv.calls()) != 1 {
		t.Errorf("invalidations %v after a 409 and a reject", inv.calls())
	}
}

// The bodies of GET /api/positions and /api/summary are the same byte for byte whether the
// cache answers (from the views it encoded once, on a miss and on a hit) or the handler
// encodes the views itself.
func TestCachedViewsAreTheSameBody(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cached := newEnvOn(t, e.db, envOptions{cached: true})
	e.addUser("trader1", trading.RoleTrader)
	e.addUser("trader2", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)
	t1, t2, risk := e.token("trader1"), e.token("trader2"), e.token("risk1")
	compare := func(when string) {
		t.Helper()
		for _, path := range []string{"/api/positions", "/api/summary"} {
			want := e.do("GET", path, t1, nil).want(200)
			for _, read := range []string{"miss", "hit"} {
				got := cached.do("GET", path, t1, nil).want(200)
				if string(got.body) != string(want.body) {
					t.Fatalf("%s, %s (%s): cached body\n%s\nwant\n%s", when, path, read, got.body, want.body)
				}
				if got.header.Get("Content-Type") != "application/json" {
					t.Fatalf("%s, %s: Content-Type %q", when, path, got.header.Get("Content-Type"))
				}
			}
		}
	}
	compare("before any trade")
	e.trade(t1, risk, "BTC/USD", "buy", "100", "150.12345678")
	e.trade(t1, risk, "ETH/USD", "sell", "2.5", "2000")
	e.trade(t2, risk, "BTC/USD", "buy", "1", "151")
	cached = newEnvOn(t, e.db, envOptions{cached: true}) // a cache that has not seen the trades
	compare("after trades in two symbols, one short, marked by another trader")
}
