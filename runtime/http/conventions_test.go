package http_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/metrics"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/ratelimit"
)

var wantSecurityHeaders = map[string]string{
	"Strict-Transport-Security": "max-age=31536000; includeSubDomains",
	"Content-Security-Policy":   "default-src 'none'; frame-ancestors 'none'",
	"X-Frame-Options":           "DENY",
	"X-Content-Type-Options":    "nosniff",
	"Referrer-Policy":           "no-referrer",
	"Cache-Control":             "no-store",
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func checkSecurityHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, v := range wantSecurityHeaders {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
	if h.Get("X-Request-ID") == "" {
		t.Errorf("%s: no X-Request-ID", what)
	}
}

// A client that declares a body over the limit and asks to be told first (Expect:
// 100-continue, what curl sends for a body over 1 MiB) is answered 413 at once, without being
// asked for the body: when it was asked, the server read 64 KiB of it, answered and closed,
// and the client, still sending, often got a connection reset instead of the 413.
func TestBodyTooLargeAnsweredBeforeItIsSent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")
	srv := httptest.NewServer(e.handler)
	t.Cleanup(srv.Close)

	for _, tc := range []struct{ path, token string }{{"/api/orders", tok}, {"/api/auth/login", ""}} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		req := "POST " + tc.path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n"
		if tc.token != "" {
			req += "Authorization: Bearer " + tc.token + "\r\n"
		}
		if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
			t.Fatal(err)
		}
		// Nothing of the body is sent: the first answer must be the final one.
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: first answer %d %q %s, want 413 problem+json without asking for the body", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		checkSecurityHeaders(t, tc.path, resp.Header)
	}
}

// Every response, successes and every kind of error alike, carries the security headers
// and a request id.
func TestHeadersOnEveryResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")

	for _, tc := range []struct {
		name    string
		method  string
		path    string
		token   string
		body    any
		headers []string
		status  int
	}{
		{"openapi", "GET", "/openapi.json", "", nil, nil, 200},
		{"login", "POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": e.passwords["trader1"]}, nil, 200},
		{"created", "POST", "/api/orders", tok, map[string]string{"symbol": "BTC/USD", "side": "buy", "quantity": "1", "price": "2"}, nil, 201},
		{"list", "GET", "/api/orders", tok, nil, nil, 200},
		{"bad login", "POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": "nope"}, nil, 401},
		{"no token", "GET", "/api/orders", "", nil, nil, 401},
		{"unknown route", "GET", "/api/nothing", tok, nil, nil, 404},
		{"unknown order", "GET", "/api/orders/" + uuid.NewString(), tok, nil, nil, 404},
		{"wrong method", "DELETE", "/api/orders", tok, nil, nil, 405},
		{"malformed", "POST", "/api/orders", tok, "{", nil, 400},
		{"media type", "POST", "/api/orders", tok, "{}", []string{"Content-Type", "text/plain"}, 415},
		{"too large", "POST", "/api/orders", tok, strings.Repeat(" ", 70<<10), nil, 413},
		{"invalid", "POST", "/api/orders", tok, map[string]string{}, nil, 422},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.method, tc.path, tc.token, tc.body, tc.headers...)
			r.want(tc.status)
			checkSecurityHeaders(t, tc.name, r.header)
			if id := r.header.Get("X-Request-ID"); !uuidPattern.MatchString(id) {
				t.Errorf("generated request id %q is not a UUID", id)
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		sent string
		echo bool
	}{
		{"abc-123", true},
		{"trace:1.2_3-x", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"has space", false},
		{"semi;colon", false},
		{`quote"`, false},
		{"ünïcode", false},
	} {
		for _, path := range []string{"/openapi.json", "/api/orders", "/nowhere"} {
			r := e.do("GET", path, "", nil, "X-Request-ID", tc.sent)
			got := r.header.Get("X-Request-ID")
			if tc.echo && got != tc.sent {
				t.Errorf("%s with %q: got %q, want it echoed", path, tc.sent, got)
			}
			if !tc.echo && (got == tc.sent || !uuidPattern.MatchString(got)) {
				t.Errorf("%s with %q: got %q, want a generated UUID", path, tc.sent, got)
			}
		}
	}
	// Generated ids differ per request.
	a := e.do("GET", "/openapi.json", "", nil).header.Get("X-Request-ID")
	b := e.do("GET", "/openapi.json", "", nil).header.Get("X-Request-ID")
	if a == b {
		t.Errorf("two requests got the same id %q", a)
	}
}

func TestUnknownRoutesAndMethods(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := func() string { e.addUser("t", trading.RoleTrader); return e.token("t") }()

	e.do("GET", "/", "", nil).problem(404)
	e.do("GET", "/api/unknown", tok, nil).problem(404)
	e.do("GET", "/api/orders/"+uuid.NewString()+"/nothing", tok, nil).problem(404)

	r := e.do("PUT", "/api/orders", tok, nil)
	r.problem(405)
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
		t.Errorf("405 Allow %q", allow)
	}
	e.do("GET", "/api/orders/"+uuid.NewString()+"/approve", tok, nil).problem(405)
	e.do("DELETE", "/api/auth/login", "", nil).problem(405)
}

// A method the path does not serve is counted under that path's route pattern, as api.md
// says endpoint is: `DELETE /api/orders` was api_requests_total{endpoint="unmatched"}, the
// label of paths no route has, so a client's wrong calls of a real route hid among scans of
// paths that do not exist. A path no route has stays "unmatched", never the raw path.
func TestMethodNotAllowedMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New("dev")
	e := newEnv(t, func(o *envOptions) { o.metrics = m })
	e.addUser("t", trading.RoleTrader)
	tok := e.token("t")
	id := uuid.NewString()

	e.do("DELETE", "/api/orders", tok, nil).problem(405)
	e.do("PUT", "/api/orders/"+id, tok, nil).problem(405)
	e.do("GET", "/api/orders/"+id+"/approve", tok, nil).problem(405)
	e.do("DELETE", "/api/orders/pending", "", nil).problem(405)
	e.do("GET", "/api/nope/"+id, tok, nil).problem(404)

	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	out := w.Body.String()
	for _, want := range []string{
		`api_requests_total{endpoint="/api/orders",method="DELETE",status="405"} 1`,
		`api_requests_total{endpoint="/api/orders/{id}",method="PUT",status="405"} 1`,
		`api_requests_total{endpoint="/api/orders/{id}/approve",method="GET",status="405"} 1`,
		`api_requests_total{endpoint="/api/orders/pending",method="DELETE",status="405"} 1`,
		`api_requests_total{endpoint="unmatched",method="GET",status="404"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(out, id) || strings.Contains(out, "/api/nope") {
		t.Error("a raw path appears in /metrics")
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", regexp.MustCompile(`(?m)^api_requests_total.*$`).FindAllString(out, -1))
	}
}

// The server-wide request target *: OPTIONS * is answered with the headers every response
// carries (tradingd's http.Server hands it to the handler), anything else with * is a 400
// problem (ServeMux answered it with an empty body).
func TestServerWideTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := httptest.NewUnstartedServer(e.handler)
	srv.Config.DisableGeneralOptionsHandler = true
	srv.Start()
	t.Cleanup(srv.Close)
	ask := func(method string) *http.Response {
		t.Helper()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := fmt.Fprintf(conn, "%s * HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n", method); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, method := range []string{"OPTIONS", "GET", "POST"} {
		resp := ask(method)
		want := http.StatusBadRequest
		if method == "OPTIONS" {
			want = http.StatusOK
		}
		if resp.StatusCode != want || resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("%s *: %d, headers %v; want %d with the security headers", method, resp.StatusCode, resp.Header, want)
		}
		if want == http.StatusBadRequest && resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s *: Content-Type %q, want problem+json", method, resp.Header.Get("Content-Type"))
		}
	}
}

func TestRequestBodies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")
	good := `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`

	t.Run("415 without application/json", func(t *testing.T) {
		for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data; boundary=x"} {
			e.do("POST", "/api/orders", tok, good, "Content-Type", ct).problem(415)
			e.do("POST", "/api/auth/login", "", `{"username":"a","password":"b"}`, "Content-Type", ct).problem(415)
		}
	})
	t.Run("415 for a content coding", func(t *testing.T) {
		// A body sent with Content-Encoding was read as if it were plain: a gzipped one was
		// refused as "not UTF-8 text" (400), a plain one labelled gzip was taken. RFC 9110
		// 12.5.3: a coding the server does not decode is 415 with Accept-Encoding saying which
		// it takes.
		for _, coding := range []string{"gzip", "deflate", "br", "identity, gzip", "GZIP"} {
			r := e.do("POST", "/api/orders", tok, good, "Content-Encoding", coding)
			if p := r.problem(415); !strings.Contains(p.Detail, "Content-Encoding") {
				t.Errorf("Content-Encoding %q: detail %q, want it to name Content-Encoding", coding, p.Detail)
			}
			if got := r.header.Get("Accept-Encoding"); got != "identity" {
				t.Errorf("Content-Encoding %q: Accept-Encoding %q, want identity", coding, got)
			}
			e.do("POST", "/api/auth/login", "", `{"username":"a","password":"b"}`, "Content-Encoding", coding).problem(415)
		}
	})
	t.Run("parameters allowed", func(t *testing.T) {
		e.do("POST", "/api/orders", tok, good, "Content-Type", "application/json; charset=utf-8").want(201)
		e.do("POST", "/api/orders", tok, good, "Content-Type", "Application/JSON").want(201)
	})
	t.Run("413 over 64 KiB", func(t *testing.T) {
		big := `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100","client_order_id":"` + strings.Repeat("x", 65<<10) + `"}`
		e.do("POST", "/api/orders", tok, big).problem(413)
		// Whitespace after a valid object counts too.
		e.do("POST", "/api/orders", tok, good+strings.Repeat("\n", 65<<10)).problem(413)
		e.do("POST", "/api/auth/login", "", `{"username":"`+strings.Repeat("u", 65<<10)+`","password":"x"}`).problem(413)
		// The limit is 64 KiB exactly: a body of 65536 bytes is read (and refused for what it
		// says, so that no order is stored), one more byte is not.
		zero := `{"symbol":"BTC/USD","side":"buy","quantity":"0","price":"100"}`
		exact := strings.Repeat(" ", 64<<10-len(zero)) + zero
		if f := e.do("POST", "/api/orders", tok, exact).fields(); f["quantity"] == "" {
			t.Errorf("a body of exactly 64 KiB: fields %v, want quantity refused", f)
		}
		e.do("POST", "/api/orders", tok, exact+" ").problem(413)
		// Just under the limit is read (and refused for what it says, not its size).
		under := `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100","client_order_id":"` + strings.Repeat("x", 60<<10) + `"}`
		if f := e.do("POST", "/api/orders", tok, under).fields(); f["client_order_id"] == "" {
			t.Errorf("fields %v", f)
		}
	})
	t.Run("400 malformed", func(t *testing.T) {
		for _, body := range []string{
			"", "{", "not json", `{"symbol":"BTC/USD",}`, `[1,2]`, `"string"`, `{"symbol":"BTC/USD"`, "null", "[]", "7",
		} {
			r := e.do("POST", "/api/orders", tok, body)
			r.problem(400)
		}
		// The detail tells an empty body from one that stops in the middle.
		if p := e.do("POST", "/api/orders", tok, "").problem(400); p.Detail != "the body is empty" {
			t.Errorf("empty body: %q", p.Detail)
		}
		for _, body := range []string{"{", `{"symbol":"BTC/USD"`, `{"symbol":"BTC/USD",`, `{"symbol"`, `{"symbol":`} {
			if p := e.do("POST", "/api/orders", tok, body).problem(400); p.Detail != "the body ends in the middle of the JSON value" {
				t.Errorf("%s: detail %q", body, p.Detail)
			}
		}
	})
	t.Run("408 when the body stalls", func(t *testing.T) {
		// The body announced does not arrive before the server's read timeout: a slow client,
		// not malformed JSON.
		srv := httptest.NewUnstartedServer(e.handler)
		srv.Config.ReadTimeout = 300 * time.Millisecond
		srv.Start()
		defer srv.Close()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", tok)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("stalled body: %d %q %s, want 408 problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		// Sent past env.do, so checked against openapi.json here.
		conform(t, exchange{method: "POST", path: "/api/orders", status: resp.StatusCode, header: resp.Header, body: b,
			reqHeader: http.Header{"Authorization": {"Bearer " + tok}, "Content-Type": {"application/json"}}, reqBody: []byte("{")})
	})
	t.Run("400 unknown field", func(t *testing.T) {
		p := e.do("POST", "/api/orders", tok, `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100","user_id":"x"}`).problem(400)
		if !strings.Contains(p.Detail, "user_id") {
			t.Errorf("detail %q does not name the field", p.Detail)
		}
		e.do("POST", "/api/auth/login", "", `{"username":"a","password":"b","admin":true}`).problem(400)
		e.do("POST", "/api/auth/refresh", "", `{"refresh_token":"a","x":1}`).problem(400)
		// Names are exact: encoding/json alone would take "Symbol" for symbol.
		p = e.do("POST", "/api/orders", tok, `{"Symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`).problem(400)
		if !strings.Contains(p.Detail, "Symbol") {
			t.Errorf("detail %q does not name the field", p.Detail)
		}
		// An unknown field is malformed even next to a field of the wrong type (a 422 alone).
		e.do("POST", "/api/orders", tok, `{"symbol":1,"side":"buy","quantity":"1","price":"100","foo":1}`).problem(400)
		e.do("POST", "/api/auth/login", "", `{"username":1,"password":"x","foo":1}`).problem(400)
	})
	t.Run("400 field given twice", func(t *testing.T) {
		p := e.do("POST", "/api/orders", tok, `{"symbol":"BTC/USD","symbol":"ETH/USD","side":"buy","quantity":"1","price":"100"}`).problem(400)
		if !strings.Contains(p.Detail, "symbol") {
			t.Errorf("detail %q does not name the field", p.Detail)
		}
	})
	t.Run("400 trailing data", func(t *testing.T) {
		for _, tail := range []string{"{}", "x", `{"symbol":"ETH/USD"}`, "1", "]"} {
			e.do("POST", "/api/orders", tok, good+tail).problem(400)
		}
		e.do("POST", "/api/orders", tok, `{"symbol":1,"side":"buy","quantity":"1","price":"100"} x`).problem(400)
		e.do("POST", "/api/orders", tok, good+"  \n\t").want(201) // whitespace is not data
	})
	t.Run("422 wrong JSON type names the field with the others", func(t *testing.T) {
		f := e.do("POST", "/api/orders", tok, `{"symbol":5,"side":"up","quantity":"1","price":"100"}`).fields()
		if f["symbol"] == "" || f["side"] == "" || len(f) != 2 {
			t.Errorf("fields %v", f)
		}
		// Every field of a wrong type says so, not only the first one encoding/json reports.
		f = e.do("POST", "/api/orders", tok, `{"symbol":123,"side":true,"quantity":[1],"price":{"a":1},"client_order_id":5}`).fields()
		for _, name := range []string{"symbol", "side", "client_order_id"} {
			if f[name] != "must be a JSON string" {
				t.Errorf("%s: %q, want \"must be a JSON string\" (fields %v)", name, f[name], f)
			}
		}
		if f["quantity"] == "" || f["price"] == "" || len(f) != 5 {
			t.Errorf("fields %v, want all five", f)
		}
	})
	t.Run("400 not UTF-8", func(t *testing.T) {
		// JSON text is UTF-8 (RFC 8259 section 8.1). encoding/json alone turns bytes that are
		// not into U+FFFD without a word: a reason sent in Latin-1 was stored altered, and a
		// client_order_id or username of such bytes came back as a 422 or 401 about text the
		// client never sent. The body is malformed, whatever field the bytes are in.
		e.addUser("risk1", trading.RoleRisk)
		risk := e.token("risk1")
		o := e.submit(tok, "BTC/USD", "buy", "1", "100")
		for _, body := range []string{
			"{\"reason\":\"caf\xe9 limit\"}", // Latin-1
			"{\"reason\":\"ok\"}\xff",        // after the value
			"{\"reas\xffon\":\"ok\"}",        // in a name
			"{\"reason\":\"\xed\xa0\x80\"}",  // a surrogate in UTF-8 form
		} {
			if p := e.do("POST", "/api/orders/"+o.ID+"/reject", risk, body).problem(400); !strings.Contains(p.Detail, "UTF-8") {
				t.Errorf("%q: detail %q does not say UTF-8", body, p.Detail)
			}
		}
		e.do("POST", "/api/orders", tok, "{\"symbol\":\"BTC/USD\",\"side\":\"buy\",\"quantity\":\"1\",\"price\":\"1\",\"client_order_id\":\"a\xffb\"}").problem(400)
		e.do("POST", "/api/auth/login", "", "{\"username\":\"trader1\",\"password\":\"caf\xe9\"}").problem(400)
		// No body decided the order; the same reason sent as UTF-8 does.
		var got order
		e.do("GET", "/api/orders/"+o.ID, tok, nil).want(200).decode(&got)
		if got.Status != "pending" || got.DecisionReason != nil {
			t.Errorf("after bodies that are not UTF-8: %+v", got)
		}
		e.do("POST", "/api/orders/"+o.ID+"/reject", risk, map[string]string{"reason": "café limit"}).want(200)
	})
	t.Run("no order was stored by any of it", func(t *testing.T) {
		var list struct{ Orders []order }
		e.do("GET", "/api/orders", tok, nil).want(200).decode(&list)
		if len(list.Orders) != 4 { // the two "parameters allowed", the trailing whitespace one and "400 not UTF-8"'s
			t.Errorf("%d orders stored, want 4", len(list.Orders))
		}
	})
}

func TestUnavailableDatabase(t *testing.T) {
	t.Parallel()
	// A real pool pointed at a port where nothing listens: every query fails to connect.
	db, err := postgres.Open(context.Background(), postgres.Config{
		URL: "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", MinConns: 0, QueryTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := newEnvOn(t, db, envOptions{})
	r := e.do("POST", "/api/auth/login", "", map[string]string{"username": "a", "password": "b"})
	r.problem(503)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if strings.Contains(string(r.body), "127.0.0.1") || strings.Contains(string(r.body), "postgres") {
		t.Errorf("503 body shows internals: %s", r.body)
	}
	// A dependency that is down is an expected condition, logged as a warning (with its
	// cause); an error-level access line for every request of an outage buried real bugs.
	for _, line := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		if strings.Contains(line, `"msg":"request"`) && !strings.Contains(line, `"level":"WARN"`) {
			t.Errorf("access log of a 503: %s", line)
		}
	}

	admin := httptest.NewServer(rthttp.NewAdminHandler(db.Ping))
	defer admin.Close()
	resp, err := http.Get(admin.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body rthttp.Problem
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/problem+json" ||
		body.Status != 503 || !strings.Contains(body.Detail, "database") {
		t.Errorf("readyz %d %q %+v, want a 503 problem naming the database", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	resp, err = http.Get(admin.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz %d while serving", resp.StatusCode)
	}
}

// TestDroppedDatabase: a database that refuses connections with a FATAL error while the API
// runs (dropped here; a revoked login or a changed password is the same) is a dependency
// down: 503 for a valid token (not 401, which would make clients drop their logins) and for a
// login (not 500).
func TestDroppedDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	e.addUser("trader2", trading.RoleTrader)
	tok := e.token("trader1")
	e.do("GET", "/api/orders", tok, nil).want(200)
	unchecked := e.token("trader2") // its login is checked for the first time after the drop

	ctx := context.Background()
	admin, name := e.adminOnDatabase()
	if _, err := admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*response{
		e.do("GET", "/api/orders", unchecked, nil),
		e.do("GET", "/api/orders", tok, nil),
		e.do("GET", "/api/trades", tok, nil),
		e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": "pw-trader1-secret"}),
	} {
		r.problem(503)
	}
}

// TestReadOnlyDatabase: a database that answers reads but refuses writes (a hot standby that
// the DSN leads to after a failover, or default_transaction_read_only set by a managed service
// whose disk is full or by an admin during maintenance) is a dependency unavailable for
// writes: every write answers 503 saying so, with Retry-After, and nothing of it is stored;
// reads and readiness go on (failing /readyz would take every replica out of the Service and
// turn a write outage into a full one). Once writes are allowed again, they work.
func TestReadOnlyDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)
	tok, risk := e.token("trader1"), e.token("risk1")
	e.trade(tok, risk, "BTC/USD", "buy", "1", "100")
	pending := e.submit(tok, "BTC/USD", "buy", "2", "100")

	ctx := context.Background()
	admin, name := e.adminOnDatabase()
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" SET default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	e.db.Pool().Reset() // the setting applies to new sessions only

	const refused = "the database refuses writes (read-only); try again later"
	for _, r := range []*response{
		e.do("POST", "/api/orders", tok, map[string]string{"symbol": "ETH/USD", "side": "buy", "quantity": "1", "price": "10"}),
		e.do("POST", "/api/orders/"+pending.ID+"/approve", risk, nil),
	} {
		if p := r.problem(503); p.Detail != refused {
			t.Errorf("detail %q, want %q", p.Detail, refused)
		}
		if r.header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	}

	// Reads answer, and show that nothing of the refused writes was stored.
	var orders struct{ Orders []order }
	e.do("GET", "/api/orders", tok, nil).want(200).decode(&orders)
	if len(orders.Orders) != 2 {
		t.Errorf("%d orders, want the 2 from before", len(orders.Orders))
	}
	var got order
	e.do("GET", "/api/orders/"+pending.ID, tok, nil).want(200).decode(&got)
	if got.Status != "pending" || got.Trade != nil {
		t.Errorf("the refused approve left the order %s (trade %v), want pending without a trade", got.Status, got.Trade)
	}
	var trades struct{ Trades []trade }
	e.do("GET", "/api/trades", tok, nil).want(200).decode(&trades)
	if len(trades.Trades) != 1 {
		t.Errorf("%d trades, want 1", len(trades.Trades))
	}
	var positions struct {
		Positions []struct{ Symbol, Quantity string }
	}
	e.do("GET", "/api/positions", tok, nil).want(200).decode(&positions)
	if len(positions.Positions) != 1 {
		t.Fatalf("positions %+v, want BTC/USD 1", positions.Positions)
	}
	decEq(t, "BTC/USD quantity", positions.Positions[0].Quantity, "1")

	readyz := httptest.NewServer(rthttp.NewAdminHandler(e.db.Ping))
	defer readyz.Close()
	resp, err := http.Get(readyz.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("readyz %d while the database serves reads, want 200", resp.StatusCode)
	}

	// Writes allowed again (or, after a failover, the DSN leading to the new primary): the
	// pool's connections, opened read-only, are replaced within seconds, without a restart.
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" RESET default_transaction_read_only"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r := e.do("POST", "/api/orders/"+pending.ID+"/approve", risk, nil)
		if r.status == 200 {
			break
		}
		if p := r.problem(503); p.Detail != refused || time.Now().After(deadline) {
			t.Fatalf("approve %s 10 s after the database takes writes again", r)
		}
	}
	e.submit(tok, "ETH/USD", "buy", "1", "10")
	e.do("GET", "/api/positions", tok, nil).want(200).decode(&positions)
	if len(positions.Positions) != 1 {
		t.Fatalf("positions %+v after writes work again, want BTC/USD 3", positions.Positions)
	}
	decEq(t, "BTC/USD quantity", positions.Positions[0].Quantity, "3")
}

func TestAdminHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mux := rthttp.NewAdminHandler(e.db.Ping)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }) // the seam for metrics
	admin := httptest.NewServer(mux)
	defer admin.Close()

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200} {
		resp, err := http.Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
		checkSecurityHeaders(t, path, resp.Header)
	}
	// The admin port's errors are the API's: problem+json, with the same headers.
	for _, c := range []struct {
		method, path string
		status       int
	}{{"GET", "/nope", 404}, {"POST", "/healthz", 405}, {"DELETE", "/metrics", 405}} {
		req, _ := http.NewRequest(c.method, admin.URL+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p rthttp.Problem
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" || err != nil || p.Status != c.status {
			t.Errorf("%s %s: %d %q %+v (%v), want %d problem+json", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), p, err, c.status)
		}
		checkSecurityHeaders(t, c.method+" "+c.path, resp.Header)
	}

	// ready reports a dependency down: 503 and the reason in JSON.
	down := httptest.NewServer(rthttp.NewAdminHandler(func(context.Context) error {
		return trading.Unavailable("database", context.DeadlineExceeded)
	}))
	defer down.Close()
	resp, err := http.Get(down.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body rthttp.Problem
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/problem+json" ||
		body.Status != 503 || body.Title != "Service Unavailable" || body.Detail != "not ready: database is unavailable" {
		t.Errorf("readyz %d %q %+v", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	checkSecurityHeaders(t, "readyz 503", resp.Header)

	// A check's error without a code may carry what a driver says (hosts, user and database
	// names): /readyz names the check, not the error.
	leaky := httptest.NewServer(rthttp.NewAdminHandlerWithChecks(rthttp.ReadyCheck{
		Name: "database",
		Check: func(context.Context) error {
			return errors.New(`failed to connect to user=trader database=prod host=10.1.2.3`)
		},
	}))
	defer leaky.Close()
	lresp, err := http.Get(leaky.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer lresp.Body.Close()
	raw, _ := io.ReadAll(lresp.Body)
	if lresp.StatusCode != 503 || strings.Contains(string(raw), "10.1.2.3") || strings.Contains(string(raw), "trader") ||
		!strings.Contains(string(raw), `"not ready: database: check failed"`) {
		t.Errorf("readyz with an uncoded error: %d %s", lresp.StatusCode, raw)
	}
}

func TestOpenAPI(t *testing.T) {
	t.Parallel()
	// Behind the real limiter, so that the HEADs below show their RateLimit headers.
	e, limited := newLimitedEnv(t, ratelimit.Config{Login: 100, Trading: 100, Data: 100, GlobalPerMinute: 1000, GlobalPerDay: 10000})
	r := e.do("GET", "/openapi.json", "", nil).want(200)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var doc struct {
		OpenAPI    string                                `json:"openapi"`
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas         map[string]json.RawMessage `json:"schemas"`
			SecuritySchemes map[string]struct {
				Type, Scheme string
			} `json:"securitySchemes"`
		} `json:"components"`
	}
	r.decode(&doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s.Type != "http" || s.Scheme != "bearer" {
		t.Errorf("bearer security scheme %+v", s)
	}
	for _, name := range []string{"Problem", "ValidationProblem", "Order", "Trade", "Position", "Summary", "TokenPair", "OrderRequest"} {
		if doc.Components.Schemas[name] == nil {
			t.Errorf("schema %s missing", name)
		}
	}

	// Every route the mux serves is documented, and every documented operation is served.
	srv := e.handler.(*rthttp.Server)
	served := map[string]bool{}
	for _, rt := range srv.Routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		served[strings.ToLower(method)+" "+path] = true
		if doc.Paths[path][strings.ToLower(method)] == nil {
			t.Errorf("route %s is not in openapi.json", rt.Pattern)
		}
		// ServeMux answers HEAD on a GET route (net/http drops the body).
		if method == http.MethodGet {
			served["head "+path] = true
			if doc.Paths[path]["head"] == nil {
				t.Errorf("HEAD %s is served but not in openapi.json", path)
			}
		}
	}
	if len(served) < 14 {
		t.Errorf("only %d routes served", len(served))
	}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			if !served[method+" "+path] {
				t.Errorf("openapi.json documents %s %s, which is not served", method, path)
			}
			var o struct {
				Responses map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(op, &o); err != nil || len(o.Responses) == 0 {
				t.Errorf("%s %s has no responses", method, path)
			}
		}
	}
	// Every HEAD the mux answers is sent, so that conform checks it against the document: GET's
	// status and headers (RateLimit ones too: it counts in the data limit), without a body.
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")
	o := e.submit(tok, "BTC/USD", "buy", "1", "2")
	for _, rt := range srv.Routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if method != http.MethodGet {
			continue
		}
		target := strings.ReplaceAll(path, "{id}", o.ID)
		head := e.do("HEAD", target, tok, nil).want(200)
		if rt.Class != rthttp.ClassNone {
			limited(head)
		}
		get := e.do("GET", target, tok, nil).want(200)
		if len(head.body) != 0 || head.header.Get("Content-Type") != get.header.Get("Content-Type") {
			t.Errorf("HEAD %s: Content-Type %q and %d bytes of body; GET's Content-Type %q", target,
				head.header.Get("Content-Type"), len(head.body), get.header.Get("Content-Type"))
		}
	}
	// Refusals of a HEAD are described too: no token, an order that is not there, a bad query.
	limited(e.do("HEAD", "/api/summary", "", nil)).want(401)
	limited(e.do("HEAD", "/api/orders/"+uuid.NewString(), tok, nil)).want(404)
	limited(e.do("HEAD", "/api/orders?limit=0", tok, nil)).want(422)

	// Every $ref points at something that exists.
	var whole map[string]any
	r.decode(&whole)
	for _, ref := range regexp.MustCompile(`"\$ref":\s*"#/([^"]+)"`).FindAllStringSubmatch(string(r.body), -1) {
		var node any = whole
		for _, part := range strings.Split(ref[1], "/") {
			m, ok := node.(map[string]any)
			if !ok || m[part] == nil {
				t.Errorf("dangling $ref #/%s", ref[1])
				break
			}
			node = m[part]
		}
	}
}

func TestAdminHandlerWithChecks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead, err := postgres.Open(context.Background(), postgres.Config{URL: "postgres://postgres@127.0.0.1:1/none?sslmode=disable", QueryTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()

	get := func(checks ...rthttp.ReadyCheck) (int, string, []byte) {
		srv := httptest.NewServer(rthttp.NewAdminHandlerWithChecks(checks...))
		defer srv.Close()
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		checkSecurityHeaders(t, "readyz", resp.Header)
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	ready := func(b []byte) rthttp.Readiness {
		var body rthttp.Readiness
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return body
	}
	status, _, b := get(rthttp.ReadyCheck{Name: "database", Check: e.db.Ping}, rthttp.ReadyCheck{Name: "redis", Check: e.db.Ping, Optional: true})
	if body := ready(b); status != 200 || body.Status != "ready" || body.Checks["database"] != "ok" || body.Checks["redis"] != "ok" {
		t.Errorf("all up: %d %+v", status, body)
	}
	// An optional dependency down: still ready, and the body says what is degraded.
	status, _, b = get(rthttp.ReadyCheck{Name: "database", Check: e.db.Ping}, rthttp.ReadyCheck{Name: "redis", Check: dead.Ping, Optional: true})
	if body := ready(b); status != 200 || body.Status != "degraded" || body.Checks["redis"] == "ok" || body.Checks["database"] != "ok" {
		t.Errorf("optional down: %d %+v", status, body)
	}
	// The database down: 503, a problem (as every error) naming it, with every check's state.
	status, contentType, b := get(rthttp.ReadyCheck{Name: "database", Check: dead.Ping}, rthttp.ReadyCheck{Name: "redis", Check: e.db.Ping, Optional: true})
	var problem struct {
		rthttp.Problem
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(b, &problem); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if status != 503 || contentType != "application/problem+json" || problem.Status != 503 ||
		!strings.Contains(problem.Detail, "database") || !strings.Contains(problem.Checks["database"], "database") || problem.Checks["redis"] != "ok" {
		t.Errorf("database down: %d %q %s", status, contentType, b)
	}
}
