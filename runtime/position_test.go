package trading

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

type fill struct {
	side       Side
	qty, price string
}

func TestApplyTrade(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fills    []fill
		qty      string // position quantity after all fills
		avg      string // average entry price after all fills
		realized string // realized P&L of the last fill
		total    string // realized P&L of the position after all fills
	}{
		{"buy from flat", []fill{{Buy, "100", "150"}}, "100", "150", "0", "0"},
		{"sell from flat opens a short", []fill{{Sell, "100", "150"}}, "-100", "150", "0", "0"},
		{"adding to a long moves the average", []fill{{Buy, "100", "150"}, {Buy, "100", "160"}}, "200", "155", "0", "0"},
		{"weighted average", []fill{{Buy, "100", "150"}, {Buy, "300", "170"}}, "400", "165", "0", "0"},
		{"adding to a short moves the average", []fill{{Sell, "100", "150"}, {Sell, "100", "160"}}, "-200", "155", "0", "0"},
		{"closing a long at a profit", []fill{{Buy, "100", "150"}, {Sell, "100", "160"}}, "0", "0", "1000", "1000"},
		{"closing a long at a loss", []fill{{Buy, "100", "150"}, {Sell, "100", "140"}}, "0", "0", "-1000", "-1000"},
		{"partly closing a long keeps the average", []fill{{Buy, "100", "150"}, {Sell, "40", "160"}}, "60", "150", "400", "400"},
		{"closing a short at a profit", []fill{{Sell, "100", "150"}, {Buy, "100", "140"}}, "0", "0", "1000", "1000"},
		{"closing a short at a loss", []fill{{Sell, "100", "150"}, {Buy, "100", "160"}}, "0", "0", "-1000", "-1000"},
		{"a sell crossing zero opens a short at the trade price", []fill{{Buy, "100", "150"}, {Sell, "150", "160"}}, "-50", "160", "1000", "1000"},
		{"a buy crossing zero opens a long at the trade price", []fill{{Sell, "100", "150"}, {Buy, "130", "140"}}, "30", "140", "1000", "1000"},
		{"realized P&L accumulates", []fill{{Buy, "100", "150"}, {Sell, "50", "160"}, {Sell, "50", "140"}}, "0", "0", "-500", "0"},
		{"fractional quantities", []fill{{Buy, "0.5", "100.1"}, {Buy, "0.25", "100.4"}}, "0.75", "100.2", "0", "0"},
		{"average kept to 20 digits", []fill{{Buy, "1", "1"}, {Buy, "2", "2"}}, "3", "1.66666666666666666667", "0", "0"},
		// Cost 302, proceeds 303: exactly 1, not (101 - 100.66666667) * 3 = 0.99999999.
		{"closing at the average's repeating decimal realizes the exact P&L", []fill{{Buy, "1", "100"}, {Buy, "2", "101"}, {Sell, "3", "101"}}, "0", "0", "1", "1"},
		{"partly closing rounds the realized P&L to 8 digits", []fill{{Buy, "1", "100"}, {Buy, "2", "101"}, {Sell, "1", "101"}}, "2", "100.66666666666666666667", "0.33333333", "0.33333333"},
		{"a short at a repeating average", []fill{{Sell, "1", "100"}, {Sell, "2", "101"}, {Buy, "3", "100"}}, "0", "0", "2", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p Position
			var realized decimal.Decimal
			for _, f := range tc.fills {
				p, realized = ApplyTrade(p, f.side, dec(f.qty), dec(f.price))
			}
			if !p.Quantity.Equal(dec(tc.qty)) {
				t.Errorf("quantity %s, want %s", p.Quantity, tc.qty)
			}
			if !p.AvgEntryPrice.Equal(dec(tc.avg)) {
				t.Errorf("avg entry %s, want %s", p.AvgEntryPrice, tc.avg)
			}
			if !realized.Equal(dec(tc.realized)) {
				t.Errorf("realized by the last fill %s, want %s", realized, tc.realized)
			}
			if !p.RealizedPnL.Equal(dec(tc.total)) {
				t.Errorf("position's realized P&L %s, want %s", p.RealizedPnL, tc.total)
			}
		})
	}
}

// A position whose average is a repeating decimal shows it to 8 digits and is valued with
// the average it keeps: bought 1 at 100 and 2 at 101, it is worth exactly 1 more at 101.
func TestViewAtRepeatingAverage(t *testing.T) {
	var p Position
	p, _ = ApplyTrade(p, Buy, dec("1"), dec("100"))
	p, _ = ApplyTrade(p, Buy, dec("2"), dec("101"))
	b, err := json.Marshal(ViewPosition(p, dec("101")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"avg_entry_price":"100.66666667"`, `"unrealized_pnl":"1.00000000"`, `"market_value":"303.00000000"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("view %s, want %s", b, want)
		}
	}
}

func TestUnrealizedPnL(t *testing.T) {
	for _, tc := range []struct {
		name           string
		qty, avg, mark string
		want           string
	}{
		{"long in profit", "100", "150", "160", "1000"},
		{"long at a loss", "100", "150", "140", "-1000"},
		{"short in profit", "-100", "150", "140", "1000"},
		{"short at a loss", "-100", "150", "160", "-1000"},
		{"flat", "0", "0", "160", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Position{Quantity: dec(tc.qty), AvgEntryPrice: dec(tc.avg)}
			if got := UnrealizedPnL(p, dec(tc.mark)); !got.Equal(dec(tc.want)) {
				t.Errorf("unrealized %s, want %s", got, tc.want)
			}
			v := ViewPosition(p, dec(tc.mark))
			if !v.UnrealizedPnL.Equal(dec(tc.want)) || !v.MarketValue.Equal(dec(tc.qty).Mul(dec(tc.mark))) {
				t.Errorf("view %+v", v)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	long := ViewPosition(Position{Symbol: "BTC/USD", Quantity: dec("2"), AvgEntryPrice: dec("100"), RealizedPnL: dec("10")}, dec("110"))
	short := ViewPosition(Position{Symbol: "ETH/USD", Quantity: dec("-3"), AvgEntryPrice: dec("50"), RealizedPnL: dec("-4")}, dec("40"))
	s := Summarize([]PositionView{long, short}, dec("6"), 2, 5)
	for name, got := range map[string]decimal.Decimal{
		"gross 220+120": s.GrossExposure.Decimal, "net 220-120": s.NetExposure.Decimal,
		"realized 10-4": s.RealizedPnL.Decimal, "unrealized 20+30": s.UnrealizedPnL.Decimal, "daily": s.DailyRealizedPnL.Decimal,
	} {
		want := map[string]string{"gross 220+120": "340", "net 220-120": "100", "realized 10-4": "6", "unrealized 20+30": "50", "daily": "6"}[name]
		if !got.Equal(dec(want)) {
			t.Errorf("%s: %s, want %s", name, got, want)
		}
	}
	if s.PositionsCount != 2 || s.PendingOrders != 2 || s.TradesToday != 5 {
		t.Errorf("counters %+v", s)
	}
}

// The summary's totals are the sums of what the positions show: a value with more than
// Scale decimals is rounded once, per position, not again after summing (three positions
// worth 0.000000015, 0.000000015 and 15 show 0.00000002 each and 15.00000000, so the gross
// exposure is 15.00000004, not 15.00000003).
func TestSummaryTotalsAreSumsOfTheShownPositions(t *testing.T) {
	views := []PositionView{
		ViewPosition(Position{Symbol: "ADA/USD", Quantity: dec("0.5"), AvgEntryPrice: dec("0.00000001")}, dec("0.00000003")),
		ViewPosition(Position{Symbol: "BTC/USD", Quantity: dec("0.5"), AvgEntryPrice: dec("0.00000001")}, dec("0.00000003")),
		ViewPosition(Position{Symbol: "XRP/USD", Quantity: dec("5"), AvgEntryPrice: dec("3")}, dec("3")),
	}
	s := Summarize(views, decimal.Zero, 0, 0)
	shown := func(a Amount) string { b, _ := a.MarshalJSON(); return string(b) }
	var gross, unrealized decimal.Decimal
	for _, v := range views {
		gross = gross.Add(dec(strings.Trim(shown(v.MarketValue), `"`)).Abs())
		unrealized = unrealized.Add(dec(strings.Trim(shown(v.UnrealizedPnL), `"`)))
	}
	if got := shown(s.GrossExposure); got != `"`+gross.StringFixed(Scale)+`"` || got != `"15.00000004"` {
		t.Errorf("gross exposure %s, the positions show %s in total", got, gross.StringFixed(Scale))
	}
	if got := shown(s.UnrealizedPnL); got != `"`+unrealized.StringFixed(Scale)+`"` {
		t.Errorf("unrealized P&L %s, the positions show %s in total", got, unrealized.StringFixed(Scale))
	}
}
