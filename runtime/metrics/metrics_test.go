package metrics_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/metrics"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// contract is every series of api.md's Operations section.
var contract = []string{
	"api_requests_total", "api_request_duration_seconds", "db_queries_total", "db_query_duration_seconds",
	"db_connections_active", "cache_hits_total", "cache_misses_total", "cache_size_bytes", "cache_entries",
	"trades_total", "trades_pnl_total", "positions_active", "positions_total_value", "daily_loss_total",
	"orders_pending_total", "orders_approved_total", "orders_rejected_total", "order_processing_time_seconds",
	"app_info", "health_check_failures_total", "uptime_seconds", "rate_limit_rejections_total",
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != 200 {
		t.Fatalf("/metrics answered %d", w.Code)
	}
	b, _ := io.ReadAll(w.Body)
	return string(b)
}

// A scripted session through the real PostgreSQL services: every contract series appears
// with its labels, and no user, order or trade id (nor a raw path) appears anywhere.
func TestContractSeriesAfterASession(t *testing.T) {
	m := metrics.New("v1.2.3")
	db, err := postgres.Open(context.Background(), postgres.Config{
		URL: pgtest.NewMigratedDatabase(t), MinConns: 1, Tracer: m.QueryTracer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	m.WatchPool(db.Pool().Stat)
	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool()))
	m.WatchCache("l1", func() (int64, int64) { return 3, 1200 })

	ids := []string{}
	mk := func(name string, role trading.Role) trading.Principal {
		var id uuid.UUID
		if err := db.Pool().QueryRow(context.Background(),
			`INSERT INTO users (username, password_hash, roles) VALUES ($1, 'x', $2) RETURNING id`,
			name, []string{string(role)}).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id.String())
		return trading.Principal{UserID: id, Username: name, Roles: []trading.Role{role}}
	}
	trader, risk := mk("trader1", trading.RoleTrader), mk("risk1", trading.RoleRisk)
	orders := m.OrderService(postgres.NewOrderService(db, postgres.OrderServiceConfig{ObserveBatch: m.ObserveBatch}))
	tctx := trading.NewContextWithPrincipal(context.Background(), trader)
	rctx := trading.NewContextWithPrincipal(context.Background(), risk)
	submit := func(side trading.Side, qty, price string) *trading.Order {
		o, _, err := orders.CreateOrder(tctx, trading.NewOrder{Symbol: "BTC/USD", Side: side,
			Quantity: decimal.RequireFromString(qty), Price: decimal.RequireFromString(price)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID.String())
		return o
	}
	for _, o := range []*trading.Order{submit(trading.Buy, "2", "100"), submit(trading.Sell, "1", "90")} {
		_, tr, err := orders.ApproveOrder(rctx, o.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tr.ID.String())
	}
	rej := submit(trading.Buy, "1", "1")
	if _, err := orders.RejectOrder(rctx, rej.ID, "no"); err != nil {
		t.Fatal(err)
	}
	submit(trading.Buy, "1", "1") // stays pending

	// HTTP: a route with an id in its path, an unknown path, and the hooks.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/orders/{id}", func(w http.ResponseWriter, r *http.Request) {})
	h := m.Middleware(withContextCopy(metrics.CapturePattern(mux)))
	for _, p := range []string{"/api/orders/" + rej.ID.String(), "/api/nope/" + trader.UserID.String()} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", p, nil))
	}
	m.CacheHit("l1", "positions")
	m.CacheMiss("l2", "summary")
	m.RateLimited("login")
	m.HealthCheckFailed()

	out := scrape(t, m)
	for _, name := range contract {
		if !strings.Contains(out, "\n"+name+"{") && !strings.Contains(out, "\n"+name+" ") &&
			!strings.Contains(out, "\n"+name+"_bucket{") {
			t.Errorf("series %s missing from /metrics", name)
		}
	}
	for _, want := range []string{
		`api_requests_total{endpoint="/api/orders/{id}",method="GET",status="200"} 1`,
		`api_requests_total{endpoint="unmatched",method="GET",status="404"} 1`,
		`trades_total{side="buy",symbol="BTC/USD"} 1`,
		`trades_total{side="sell",symbol="BTC/USD"} 1`,
		`trades_pnl_total{symbol="BTC/USD"} -10`,
		`orders_approved_total{symbol="BTC/USD"} 2`,
		`orders_rejected_total{symbol="BTC/USD"} 1`,
		`positions_active{symbol="BTC/USD"} 1`,
		`positions_total_value{currency="USD"} 90`,
		`orders_pending_total 1`,
		`daily_loss_total 10`,
		`app_info{version="v1.2.3"} 1`,
		`health_check_failures_total 1`,
		`rate_limit_rejections_total{class="login"} 1`,
		`cache_entries{cache_level="l1"} 3`,
		`db_queries_total{operation="insert",table="orders"}`,
		`db_batch_size_count{operation="insert_orders"} 4`, // four submissions, one at a time
		`db_batch_size_count{operation="approve_orders"} 2`,
		`db_queries_total{operation="update",table="orders"}`,
		`db_query_duration_seconds_bucket{table="trades",le="0.001"}`,
		`order_processing_time_seconds_count{status="approved"} 2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, id := range ids {
		if strings.Contains(out, id) {
			t.Errorf("an id (%s) appears in /metrics", id)
		}
	}
	if strings.Contains(out, "/api/nope") {
		t.Error("a raw path appears in /metrics")
	}
	// The batched statements and the marks' lookup read FROM unnest(...): a function, not a
	// table.
	for _, m := range regexp.MustCompile(`table="([^"]*)"`).FindAllStringSubmatch(out, -1) {
		switch m[1] {
		case "users", "sessions", "refresh_tokens", "orders", "trades", "positions", "none":
		default:
			t.Errorf("db metrics labelled with table %q", m[1])
		}
	}
}

// Before anything happened, a replica already shows every per-symbol series at zero, and
// the business gauges at zero for symbols nobody holds: a replica that has not rejected an
// order yet still has orders_rejected_total, and positions_active does not vanish when the
// last position of a symbol is closed. Only the request series wait for a first request.
func TestSeriesFromTheFirstScrape(t *testing.T) {
	m := metrics.New("v1.2.3")
	db, err := postgres.Open(context.Background(), postgres.Config{URL: pgtest.NewMigratedDatabase(t), Tracer: m.QueryTracer()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	m.WatchPool(db.Pool().Stat)
	m.Symbols([]string{"BTC/USD", "ETH/EUR"})
	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool())) // an empty database: no positions

	out := scrape(t, m)
	for _, name := range contract {
		switch name {
		case "api_requests_total", "api_request_duration_seconds", "db_queries_total", "db_query_duration_seconds":
			continue // by route or table, once used
		}
		if !strings.Contains(out, "\n"+name+"{") && !strings.Contains(out, "\n"+name+" ") &&
			!strings.Contains(out, "\n"+name+"_bucket{") {
			t.Errorf("series %s missing from the first scrape", name)
		}
	}
	for _, want := range []string{
		`trades_total{side="sell",symbol="ETH/EUR"} 0`,
		`trades_pnl_total{symbol="BTC/USD"} 0`,
		`orders_approved_total{symbol="ETH/EUR"} 0`,
		`orders_rejected_total{symbol="BTC/USD"} 0`,
		`order_processing_time_seconds_count{status="rejected"} 0`,
		`positions_active{symbol="BTC/USD"} 0`,
		`positions_total_value{currency="EUR"} 0`,
		`positions_total_value{currency="USD"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the first scrape lacks %s", want)
		}
	}
}

// withContextCopy stands for a middleware between Middleware and the mux that replaces the
// request (as runtime/http's request-id middleware does).
func withContextCopy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), struct{}{}, 1)))
	})
}

func TestCaptureRoute(t *testing.T) {
	m := metrics.New("dev")
	h := m.Middleware(metrics.CaptureRoute("POST /api/orders/{id}/approve", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(409)
	})))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/api/orders/"+uuid.NewString()+"/approve", nil))
	if out := scrape(t, m); !strings.Contains(out, `api_requests_total{endpoint="/api/orders/{id}/approve",method="POST",status="409"} 1`) {
		t.Fatalf("route not labelled:\n%s", grep(out, "api_requests_total"))
	}
}

func grep(s, sub string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func TestClassifySQL(t *testing.T) {
	for _, tc := range []struct{ sql, op, table string }{
		{"SELECT id FROM orders WHERE id = $1", "select", "orders"},
		{"\n\t\tselect id,\n symbol from trades t where x", "select", "trades"},
		{"INSERT INTO positions AS p (user_id) VALUES ($1)", "insert", "positions"},
		{"UPDATE orders SET status = 'approved'", "update", "orders"},
		{"DELETE FROM refresh_tokens WHERE x", "delete", "refresh_tokens"},
		{"-- comment\nSELECT 1", "select", "none"},
		{"/* c */ select now()", "select", "none"},
		{"WITH t AS (INSERT INTO trades (a) VALUES (1) RETURNING *), p AS (\n UPDATE positions SET q = 1) SELECT id FROM t", "insert", "trades"},
		{"WITH x AS (SELECT 1 FROM orders) SELECT * FROM users", "select", "orders"},
		{"INSERT INTO positions AS p (user_id, symbol) VALUES ($1, $2) ON CONFLICT (user_id, symbol) DO UPDATE SET symbol = p.symbol", "insert", "positions"},
		{"SELECT p.symbol FROM (SELECT symbol FROM positions) p LEFT JOIN LATERAL (SELECT 1) m ON true", "select", "positions"},
		{"SELECT * FROM public.users", "select", "users"},
		{"begin", "transaction", "none"},
		{"VACUUM", "other", "other"},
		{`SELECT * FROM "weird-name"`, "select", "other"},
		{"SELECT s.symbol, m.price FROM unnest($1::text[]) AS s(symbol) CROSS JOIN LATERAL (SELECT t.price FROM trades t LIMIT 1) m", "select", "trades"},
		{"SELECT o.id FROM orders o JOIN unnest($1::uuid[]) AS d(id) ON o.id = d.id", "select", "orders"},
		{"SELECT * FROM unnest($1::int[])", "select", "other"},
	} {
		op, table := metrics.ClassifySQL(tc.sql)
		if op != tc.op || table != tc.table {
			t.Errorf("ClassifySQL(%q) = %s, %s; want %s, %s", tc.sql, op, table, tc.op, tc.table)
		}
	}
}

// The business gauges stay on /metrics (at zero, or their last values) while the
// database does not answer: a scrape never fails because of it.
func TestBusinessCollectorSurvivesADeadDatabase(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m := metrics.New("dev")
	m.WatchBusiness(metrics.NewSQLBusiness(pool))
	out := scrape(t, m)
	if !strings.Contains(out, "orders_pending_total 0") {
		t.Fatalf("gauges missing while the database is down:\n%s", grep(out, "orders_pending"))
	}
}

// The business gauges of the replica that made a change show it on the next scrape, however
// recently the previous scrape was: after a submission orders_pending_total counts it, after
// the approval it is gone from there and the position is in positions_active and
// positions_total_value, after a rejection it is gone again. (The gauges are read from the
// database at most every few seconds; a scrape right after an approval showed
// orders_approved_total 1 next to orders_pending_total 1 and positions_active 0.)
func TestBusinessGaugesFollowThisReplicasWrites(t *testing.T) {
	m := metrics.New("dev")
	db, err := postgres.Open(context.Background(), postgres.Config{URL: pgtest.NewMigratedDatabase(t), Tracer: m.QueryTracer()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	m.Symbols([]string{"BTC/USD"})
	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool()))
	mk := func(name string, role trading.Role) context.Context {
		var id uuid.UUID
		if err := db.Pool().QueryRow(context.Background(),
			`INSERT INTO users (username, password_hash, roles) VALUES ($1, 'x', $2) RETURNING id`,
			name, []string{string(role)}).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return trading.NewContextWithPrincipal(context.Background(), trading.Principal{UserID: id, Username: name, Roles: []trading.Role{role}})
	}
	tctx, rctx := mk("trader1", trading.RoleTrader), mk("risk1", trading.RoleRisk)
	orders := m.OrderService(postgres.NewOrderService(db, postgres.OrderServiceConfig{}))
	submit := func() *trading.Order {
		o, _, err := orders.CreateOrder(tctx, trading.NewOrder{Symbol: "BTC/USD", Side: trading.Buy,
			Quantity: decimal.RequireFromString("2"), Price: decimal.RequireFromString("100")})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	expect := func(step string, want ...string) {
		t.Helper()
		out := scrape(t, m)
		for _, w := range want {
			if !strings.Contains(out, "\n"+w+"\n") {
				t.Errorf("after %s /metrics lacks %s:\n%s%s", step, w, grep(out, "orders_pending"), grep(out, "positions_"))
			}
		}
	}
	expect("start", "orders_pending_total 0", `positions_active{symbol="BTC/USD"} 0`)
	o := submit()
	expect("a submission", "orders_pending_total 1")
	if _, _, err := orders.ApproveOrder(rctx, o.ID); err != nil {
		t.Fatal(err)
	}
	expect("the approval", "orders_pending_total 0", `positions_active{symbol="BTC/USD"} 1`, `positions_total_value{currency="USD"} 200`)
	o = submit()
	expect("another submission", "orders_pending_total 1")
	if _, err := orders.RejectOrder(rctx, o.ID, "no"); err != nil {
		t.Fatal(err)
	}
	expect("the rejection", "orders_pending_total 0")
}
