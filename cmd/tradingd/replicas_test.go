package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"

	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// call sends one API request and returns status, headers and body.
func call(t *testing.T, method, url, token, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func token(t *testing.T, api, user, password string) string {
	t.Helper()
	code, out := login(t, api, user, password)
	tok, _ := out["access_token"].(string)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("login %s on %s: %d %v", user, api, code, out)
	}
	return tok
}

// twoReplicas starts two tradingd replicas on a migrated database of their own and the Redis
// at redisURL, with the demo users, and more (settings of the test's own, overriding these).
// The first starts alone: it creates the demo users.
func twoReplicas(t *testing.T, redisURL string, more map[string]string) (a, b replica) {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL": pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"REDIS_URL":    redisURL,
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
		"DEMO_USERS":   "true",
	}
	maps.Copy(env, more)
	return startReplica(t, env), startReplica(t, env)
}

// mustCall is call for a request that has to be answered with want whatever Redis does.
func mustCall(t *testing.T, want int, method, url, tok, body string) []byte {
	t.Helper()
	code, _, out := call(t, method, url, tok, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, code, out, want)
	}
	return out
}

// bookOn reads the book of the trader whose token is tok on replica r: the quantity of
// their first position ("0" without one), trailing zeros dropped, and the summary's
// trades_today.
func bookOn(t *testing.T, r replica, tok string) (quantity string, trades int) {
	t.Helper()
	var book struct{ Positions []struct{ Quantity string } }
	var summary struct {
		TradesToday int `json:"trades_today"`
	}
	_ = json.Unmarshal(mustCall(t, 200, "GET", r.api+"/api/positions", tok, ""), &book)
	_ = json.Unmarshal(mustCall(t, 200, "GET", r.api+"/api/summary", tok, ""), &summary)
	if len(book.Positions) == 0 {
		return "0", summary.TradesToday
	}
	return strings.TrimRight(strings.TrimRight(book.Positions[0].Quantity, "0"), "."), summary.TradesToday
}

// tradeOn buys qty BTC/USD at 100 for trader on replica r, approved by risk there.
func tradeOn(t *testing.T, r replica, trader, risk string, qty int) {
	t.Helper()
	var order struct{ ID string }
	_ = json.Unmarshal(mustCall(t, 201, "POST", r.api+"/api/orders", trader,
		fmt.Sprintf(`{"symbol":"BTC/USD","side":"buy","quantity":"%d","price":"100"}`, qty)), &order)
	mustCall(t, 200, "POST", r.api+"/api/orders/"+order.ID+"/approve", risk, "")
}

// testRedis returns a REDIS_URL on a database of its own (1-15) of the test Redis: the rate-limit
// buckets of 127.0.0.1 must not be shared with other test packages running at the same time.
// redistest.ClaimDatabase takes it (and the demo's test claims the same way); it is emptied and
// freed when the test ends.
func testRedis(t *testing.T) string {
	t.Helper()
	base := os.Getenv("REDIS_URL")
	if base == "" {
		base = "redis://127.0.0.1:6379/0"
	}
	u, release, err := redistest.ClaimDatabase(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return u
}

type replica struct {
	api, admin string
	proc       *process
}

func startReplica(t *testing.T, env map[string]string) replica {
	t.Helper()
	p := startServe(t, env)
	serving := p.waitLog("serving")
	api, _ := serving["api_addr"].(string)
	admin, _ := serving["admin_addr"].(string)
	return replica{api: "http://" + api, admin: "http://" + admin, proc: p}
}

// TestReplicasBehaveAsOne runs two tradingd processes on one PostgreSQL and one Redis, as two
// pods of one Deployment: the login limit holds across both, a trade approved on one is in
// the positions and summary the other serves (its L1 was invalidated through Redis), and
// each exposes the contract's metrics.
func TestReplicasBehaveAsOne(t *testing.T) {
	a, b := twoReplicas(t, testRedis(t), map[string]string{"RATE_LIMIT_LOGIN": "4"})

	// Four logins spread over both replicas use up the shared login limit of 127.0.0.1.
	trader := token(t, a.api[len("http://"):], "trader1", "password123")
	risk := token(t, b.api[len("http://"):], "risk1", "password789")
	token(t, a.api[len("http://"):], "trader2", "password456")
	token(t, b.api[len("http://"):], "trader2", "password456")
	code, h, body := call(t, "POST", a.api+"/api/auth/login", "", `{"username":"trader1","password":"password123"}`)
	if code != http.StatusTooManyRequests {
		t.Fatalf("fifth login over two replicas with RATE_LIMIT_LOGIN=4: %d %s, want 429", code, body)
	}
	if h.Get("Retry-After") == "" || h.Get("RateLimit-Limit") != "4" || h.Get("RateLimit-Remaining") != "0" {
		t.Errorf("429 headers: Retry-After %q RateLimit-Limit %q RateLimit-Remaining %q",
			h.Get("Retry-After"), h.Get("RateLimit-Limit"), h.Get("RateLimit-Remaining"))
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("429 Content-Type %q", ct)
	}

	// B caches trader1's empty book, in L1 and L2.
	for range 2 {
		if code, _, body := call(t, "GET", b.api+"/api/positions", trader, ""); code != 200 || !strings.Contains(string(body), `"positions":[]`) {
			t.Fatalf("positions on B before the trade: %d %s", code, body)
		}
		if code, _, body := call(t, "GET", b.api+"/api/summary", trader, ""); code != 200 {
			t.Fatalf("summary on B before the trade: %d %s", code, body)
		}
	}
	// The order goes through A; B must show it at once, although both reads are cached.
	code, _, body = call(t, "POST", a.api+"/api/orders", trader, `{"symbol":"ETH/USD","side":"buy","quantity":"2","price":"3000"}`)
	if code != http.StatusCreated {
		t.Fatalf("submit on A: %d %s", code, body)
	}
	var order struct{ ID string }
	_ = json.Unmarshal(body, &order)
	var pending struct {
		PendingOrders int `json:"pending_orders"`
	}
	_, _, body = call(t, "GET", b.api+"/api/summary", trader, "")
	if _ = json.Unmarshal(body, &pending); pending.PendingOrders != 1 {
		t.Fatalf("summary on B right after a submission on A: %s, want pending_orders 1", body)
	}
	if code, _, body := call(t, "POST", a.api+"/api/orders/"+order.ID+"/approve", risk, ""); code != 200 {
		t.Fatalf("approve on A: %d %s", code, body)
	}
	code, _, body = call(t, "GET", b.api+"/api/positions", trader, "")
	var positions struct {
		Positions []struct{ Symbol, Quantity string }
	}
	_ = json.Unmarshal(body, &positions)
	if code != 200 || len(positions.Positions) != 1 || positions.Positions[0].Symbol != "ETH/USD" {
		t.Fatalf("positions on B right after the approve on A (stale cache?): %d %s", code, body)
	}
	code, _, body = call(t, "GET", b.api+"/api/summary", trader, "")
	var summary struct {
		PositionsCount int `json:"positions_count"`
		TradesToday    int `json:"trades_today"`
	}
	_ = json.Unmarshal(body, &summary)
	if code != 200 || summary.PositionsCount != 1 || summary.TradesToday != 1 {
		t.Fatalf("summary on B right after the approve on A (stale cache?): %d %s", code, body)
	}

	// A rejected order, so that every series of the contract has been through the script.
	_, _, body = call(t, "POST", b.api+"/api/orders", trader, `{"symbol":"BTC/USD","side":"sell","quantity":"1","price":"50000"}`)
	_ = json.Unmarshal(body, &order)
	if code, _, body := call(t, "POST", a.api+"/api/orders/"+order.ID+"/reject", risk, `{"reason":"too large"}`); code != 200 {
		t.Fatalf("reject on A: %d %s", code, body)
	}

	// Readiness names Redis; metrics carry every contract series and no raw ids.
	for _, r := range []replica{a, b} {
		if code, body := get(t, r.admin+"/readyz"); code != 200 || !strings.Contains(body, "redis") {
			t.Errorf("/readyz on %s: %d %s", r.admin, code, body)
		}
	}
	_, metricsText := get(t, a.admin+"/metrics")
	_, metricsB := get(t, b.admin+"/metrics")
	all := metricsText + metricsB
	for _, series := range []string{
		"api_requests_total", "api_request_duration_seconds", "db_queries_total", "db_query_duration_seconds",
		"db_connections_active", "cache_hits_total", "cache_misses_total", "cache_size_bytes", "cache_entries",
		"trades_total", "trades_pnl_total", "positions_active", "positions_total_value", "daily_loss_total",
		"orders_pending_total", "orders_approved_total", "orders_rejected_total", "order_processing_time_seconds",
		"app_info", "health_check_failures_total", "uptime_seconds", "rate_limit_rejections_total",
	} {
		if !regexp.MustCompile(`(?m)^`+series+`[{ ]`).MatchString(all) && !strings.Contains(all, "\n"+series+"_bucket{") {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if !strings.Contains(metricsText, `api_requests_total{endpoint="/api/orders/{id}/approve",method="POST",status="200"} 1`) {
		t.Errorf("api_requests_total is not labelled by route pattern:\n%s", regexp.MustCompile(`(?m)^api_requests_total.*$`).FindAllString(metricsText, -1))
	}
	if !regexp.MustCompile(`rate_limit_rejections_total\{class="login"\} 1`).MatchString(metricsText) {
		t.Errorf("the refused login is not counted in rate_limit_rejections_total{class=\"login\"} on A")
	}
	if id := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`).FindString(all); id != "" {
		t.Errorf("/metrics contains a raw id: %s", id)
	}
}

// TestServeSurvivesRedisOutage kills the Redis of a running tradingd: reads and writes keep
// working from L1 and the database, limits fall back to the process, /readyz stays 200 and
// says degraded; a Redis back on the same port is used again.
func TestServeSurvivesRedisOutage(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is needed for this test (hack/services.sh installs it): %v", err)
	}
	port := freePort(t)
	startRedis := func() *exec.Cmd {
		cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + port})
		defer c.Close()
		// Bounded: a redis-server that could not start (the port taken meanwhile) fails the
		// test here rather than hanging it until go test's timeout.
		for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; {
			if time.Now().After(deadline) {
				t.Fatalf("redis-server on port %s did not answer", port)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cmd
	}
	redisProc := startRedis()
	t.Cleanup(func() { _ = redisProc.Process.Kill(); _, _ = redisProc.Process.Wait() })

	r := startReplica(t, map[string]string{
		"DATABASE_URL": pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"REDIS_URL":    "redis://127.0.0.1:" + port + "/0",
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
		"DEMO_USERS":   "true",
	})
	trader := token(t, r.api[len("http://"):], "trader1", "password123")
	risk := token(t, r.api[len("http://"):], "risk1", "password789")
	trade := func(qty string) {
		t.Helper()
		code, _, body := call(t, "POST", r.api+"/api/orders", trader, `{"symbol":"BTC/USD","side":"buy","quantity":"`+qty+`","price":"100"}`)
		if code != http.StatusCreated {
			t.Fatalf("submit: %d %s", code, body)
		}
		var o struct{ ID string }
		_ = json.Unmarshal(body, &o)
		if code, _, body := call(t, "POST", r.api+"/api/orders/"+o.ID+"/approve", risk, ""); code != 200 {
			t.Fatalf("approve: %d %s", code, body)
		}
	}
	quantity := func() string {
		t.Helper()
		code, h, body := call(t, "GET", r.api+"/api/positions", trader, "")
		if code != 200 || h.Get("RateLimit-Limit") == "" {
			t.Fatalf("positions: %d %s (RateLimit-Limit %q)", code, body, h.Get("RateLimit-Limit"))
		}
		var p struct{ Positions []struct{ Quantity string } }
		_ = json.Unmarshal(body, &p)
		if len(p.Positions) != 1 {
			t.Fatalf("positions: %s", body)
		}
		return strings.TrimRight(strings.TrimRight(p.Positions[0].Quantity, "0"), ".")
	}
	trade("1")
	if q := quantity(); q != "1" {
		t.Fatalf("quantity %s, want 1", q)
	}

	_ = redisProc.Process.Kill()
	_, _ = redisProc.Process.Wait()
	trade("2") // a write with Redis gone: invalidation cannot reach Redis, the trade still lands
	if q := quantity(); q != "3" {
		t.Fatalf("quantity with Redis down %s, want 3 (a stale L1 entry would say 1)", q)
	}
	waitFor(t, func() bool {
		code, body := get(t, r.admin+"/readyz")
		return code == 200 && strings.Contains(body, "degraded")
	}, "/readyz 200 and degraded while Redis is down")

	redisProc = startRedis()
	waitFor(t, func() bool {
		code, body := get(t, r.admin+"/readyz")
		return code == 200 && !strings.Contains(body, "degraded")
	}, "/readyz no longer degraded once Redis is back")
	trade("4")
	if q := quantity(); q != "7" {
		t.Fatalf("quantity after Redis came back %s, want 7", q)
	}
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + port})
	defer c.Close()
	waitFor(t, func() bool { // shared limits and L2 resumed: tradingd writes keys to the new Redis
		keys, _ := c.Keys(context.Background(), "*").Result()
		return len(keys) > 0
	}, "tradingd using the restarted Redis")
	// LOG_FORMAT=json (the default) holds for every line, the Redis client library's own
	// complaints about the outage included.
	for _, line := range strings.Split(strings.TrimSpace(r.proc.log()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("a log line that is not JSON: %s", line)
		}
	}
}

// TestReadyzSaysRedisIsSlow: a Redis whose every reply comes later than the 100 ms bound of
// a cache call (here about 300 ms, behind a proxy) serves no read: neither cache level is
// trusted and every read goes to the database. /readyz said "ready" and "redis":"ok" all
// along, since the health probe waits up to a second; it says degraded, and why, while
// that lasts, and ready again once Redis answers in time. Requests keep working meanwhile.
func TestReadyzSaysRedisIsSlow(t *testing.T) {
	redisURL, err := url.Parse(testRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newStallProxy(t, redisURL.Host)
	redisURL.Host = proxy.ln.Addr().String()
	r := startReplica(t, map[string]string{
		"DATABASE_URL": pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"REDIS_URL":    redisURL.String(),
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
		"DEMO_USERS":   "true",
	})
	waitReadyz(t, r.admin, `"redis":"ok"`, "/readyz before Redis is slow")

	proxy.slow(150 * time.Millisecond)
	waitReadyz(t, r.admin, `"redis":"degraded: slow: no reply within 100ms`, "/readyz with every Redis reply about 300 ms late: degraded, saying slow")
	// Each rate-limit script call is bounded by the same 100 ms, so each request is decided
	// by this replica's own buckets, as with Redis down: it said "reads go to the database
	// meanwhile" as if limits stayed shared.
	waitReadyz(t, r.admin, `; reads go to the database and rate limits are per replica meanwhile"`, "/readyz with Redis slow: says the limits are per replica")
	trader := token(t, r.api[len("http://"):], "trader1", "password123")
	mustCall(t, http.StatusOK, "GET", r.api+"/api/positions", trader, "")

	proxy.slow(0)
	waitReadyz(t, r.admin, `"redis":"ok"`, "/readyz once Redis answers in time again")
}

// waitFor polls cond (every 50ms) until it holds; the test binary's timeout bounds it.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServeStartsWithRedisDown: a REDIS_URL that nothing answers at start is no reason not
// to serve; /readyz is 200 and says degraded, and every log line is JSON, the Redis client
// library's complaints about the failed dials included.
func TestServeStartsWithRedisDown(t *testing.T) {
	r := startReplica(t, map[string]string{
		"DATABASE_URL": pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"REDIS_URL":    "redis://127.0.0.1:" + freePort(t) + "/0", // closed
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	})
	if code, body := get(t, r.admin+"/readyz"); code != 200 || !strings.Contains(body, `"status":"degraded"`) ||
		!regexp.MustCompile(`"redis":"degraded: not answering: [^"]+; reads go to the database and rate limits are per replica meanwhile"`).MatchString(body) {
		t.Fatalf("/readyz with Redis down at start: %d %s", code, body)
	}
	for _, line := range strings.Split(strings.TrimSpace(r.proc.log()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("a log line that is not JSON: %s", line)
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// startWarnings starts a replica with env and returns the WARN lines it logged before
// "serving" (startReplica waits for that line: the start's checks come before it).
func startWarnings(t *testing.T, env map[string]string) []map[string]any {
	t.Helper()
	r := startReplica(t, env)
	r.proc.mu.Lock()
	defer r.proc.mu.Unlock()
	var warns []map[string]any
	for _, l := range r.proc.logs {
		if l["level"] == "WARN" {
			warns = append(warns, l)
		}
	}
	return warns
}

// TestServeStartWarnings: settings and states that serve but need a look are said once at
// start: a schema newer than the binary's (an upgrade rolling out, or a rollback), and
// TRUSTED_PROXIES that believe every address.
func TestServeStartWarnings(t *testing.T) {
	dsn := pgtest.NewMigratedDatabase(t)
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(context.Background(), `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, postgres.SchemaVersion+1)
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	warns := startWarnings(t, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0",
		"TRUSTED_PROXIES": "10.0.0.0/8,0.0.0.0/0"})
	var schema, proxies bool
	for _, w := range warns {
		msg, _ := w["msg"].(string)
		schema = schema || strings.Contains(msg, "schema is newer than this binary") && w["schema_version"] == float64(postgres.SchemaVersion+1)
		proxies = proxies || strings.Contains(msg, "TRUSTED_PROXIES includes every address (0.0.0.0/0)")
	}
	if !schema || !proxies {
		t.Errorf("warnings before serving: %v; want the newer schema (%v) and the proxies (%v) said", warns, schema, proxies)
	}
}
