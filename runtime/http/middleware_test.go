package http_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
)

// The seams for metrics (Observe) and rate limits (Guard): Observe sees every answer of a
// route with its pattern, 401s included; Guard runs after authentication with the
// principal in the context, and around authentication's refusal without one (a limiter
// counts those per client IP), and its refusal is the client's answer.
func TestMiddlewareSeams(t *testing.T) {
	t.Parallel()
	type seen struct {
		pattern, rPattern, class string
		status                   int
	}
	var mu sync.Mutex
	var observed []seen
	var guarded []string
	observe := func(rt rthttp.Route, next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusRecorder{ResponseWriter: w, status: 200}
			next.ServeHTTP(rec, r)
			mu.Lock()
			observed = append(observed, seen{rt.Pattern, r.Pattern, rt.Class, rec.status})
			mu.Unlock()
		})
	}
	guard := func(rt rthttp.Route, next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := trading.PrincipalFromContext(r.Context())
			if ok && !rt.Auth {
				t.Errorf("%s: a principal on a route without authentication", rt.Pattern)
			}
			mu.Lock()
			guarded = append(guarded, rt.Pattern+" "+p.Username)
			mu.Unlock()
			if r.Header.Get("X-Test-Refuse") != "" {
				w.Header().Set("Retry-After", "7")
				rthttp.WriteError(w, r, trading.Errorf(trading.ERATELIMIT, "too many requests"))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, func(o *envOptions) {
		o.observe = []rthttp.Middleware{observe}
		o.guard = []rthttp.Middleware{guard}
	})
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")
	o := e.submit(tok, "BTC/USD", "buy", "1", "1")
	e.do("GET", "/api/orders/"+o.ID, tok, nil).want(200)
	e.do("GET", "/api/orders/"+o.ID, "", nil).want(401)
	r := e.do("GET", "/api/positions", tok, nil, "X-Test-Refuse", "1")
	r.problem(429)
	checkSecurityHeaders(t, "guard refusal", r.header)
	if r.header.Get("Retry-After") != "7" {
		t.Errorf("Retry-After %q, want the limiter's 7", r.header.Get("Retry-After"))
	}

	mu.Lock()
	defer mu.Unlock()
	want := []seen{
		{"POST /api/auth/login", "POST /api/auth/login", "login", 200},
		{"POST /api/orders", "POST /api/orders", "trading", 201},
		{"GET /api/orders/{id}", "GET /api/orders/{id}", "data", 200},
		{"GET /api/orders/{id}", "GET /api/orders/{id}", "data", 401},
		{"GET /api/positions", "GET /api/positions", "data", 429},
	}
	if len(observed) != len(want) {
		t.Fatalf("observed %+v", observed)
	}
	for i := range want {
		if observed[i] != want[i] {
			t.Errorf("observed %+v, want %+v", observed[i], want[i])
		}
	}
	wantGuarded := "POST /api/auth/login |POST /api/orders trader1|GET /api/orders/{id} trader1|GET /api/orders/{id} |GET /api/positions trader1"
	if got := strings.Join(guarded, "|"); got != wantGuarded {
		t.Errorf("guarded %q\nwant    %q", got, wantGuarded)
	}
}

// A panic in a handler is a logged 500 problem, not a dropped connection.
func TestPanicRecovery(t *testing.T) {
	t.Parallel()
	boom := func(rt rthttp.Route, next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Test-Panic") != "" {
				panic("boom")
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, func(o *envOptions) { o.observe = []rthttp.Middleware{boom} })
	r := e.do("GET", "/openapi.json", "", nil, "X-Test-Panic", "1")
	p := r.problem(500)
	if p.Detail != "internal error" || strings.Contains(string(r.body), "boom") {
		t.Errorf("500 body %s", r.body)
	}
	checkSecurityHeaders(t, "panic", r.header)
	if !strings.Contains(e.logs.String(), "boom") {
		t.Error("the panic was not logged")
	}
	e.do("GET", "/openapi.json", "", nil).want(200)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
