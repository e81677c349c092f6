package http_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"
	"golang.org/x/crypto/bcrypt"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/cache"
	rthttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/jwt"
	"github.com/findmy/trading-operator/runtime/metrics"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// The signing secret of the test key set; tests forge tokens with it and with others.
var (
	signingSecret = bytes.Repeat([]byte{0x5a}, 32)
	otherSecret   = bytes.Repeat([]byte{0x33}, 32)
)

const (
	issuer   = "tradingd"
	audience = "trading-api"
)

var rules = trading.OrderRules{
	Symbols:     []string{"BTC/USD", "ETH/USD", "BNB/USD", "XRP/USD", "ADA/USD"},
	MaxQuantity: decimal.NewFromInt(1000000),
	MaxPrice:    decimal.NewFromInt(1000000),
}

// env is one tradingd API on a fresh migrated database of its own, reached over real HTTP.
type env struct {
	t       testing.TB
	srv     *httptest.Server
	handler http.Handler
	db      *postgres.DB
	users   trading.UserService
	logs    *syncBuffer
	// passwords of the users that addUser created, by username
	passwords map[string]string
	ids       map[string]string
}

type envOptions struct {
	maxDailyLoss *decimal.Decimal
	invalidator  trading.Invalidator
	observe      []rthttp.Middleware
	guard        []rthttp.Middleware
	refreshTTL   time.Duration
	// cached puts runtime/cache (L1 only) in front of the portfolio, as tradingd does, with
	// the order service invalidating it; invalidator must then be nil.
	cached bool
	// sessionEvents carries ended logins between servers (a runtime/redis client).
	sessionEvents rthttp.SessionEvents
	// metrics, when set, counts the requests as tradingd does: the route pattern from
	// Observe (metrics.CaptureRoute), and metrics.Middleware around the whole handler.
	metrics *metrics.Metrics
}

func newEnv(t testing.TB, opts ...func(*envOptions)) *env {
	t.Helper()
	var o envOptions
	for _, f := range opts {
		f(&o)
	}
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	db, err := postgres.Open(ctx, postgres.Config{URL: dsn, MinConns: 1, MaxConns: 20})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(db.Close)
	return newEnvOn(t, db, o)
}

func newEnvOn(t testing.TB, db *postgres.DB, o envOptions) *env {
	keys, err := jwt.ParseKeys("k2:" + base64.StdEncoding.EncodeToString(signingSecret) + ",k1:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 40)))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	users := postgres.NewUserService(db)
	// The invalidator goes to the API only, so that tests see what the handler does.
	var portfolio trading.PortfolioService = postgres.NewPortfolioService(db)
	var orderInvalidator trading.Invalidator
	if o.cached {
		c := cache.NewPortfolio(postgres.NewPortfolioService(db), cache.Options{})
		t.Cleanup(c.Close)
		portfolio, orderInvalidator = c, c
	}
	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{MaxDailyLoss: o.maxDailyLoss, Invalidator: orderInvalidator})
	observe := o.observe
	if o.metrics != nil {
		observe = append(observe, func(rt rthttp.Route, next http.Handler) http.Handler {
			return metrics.CaptureRoute(rt.Pattern, next)
		})
	}
	h := rthttp.NewHandler(rthttp.Config{
		Rules:         rules,
		Tokens:        jwt.NewAuthority(keys, issuer, audience, time.Hour),
		RefreshTTL:    o.refreshTTL,
		Logger:        slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observe:       observe,
		Guard:         o.guard,
		SessionEvents: o.sessionEvents,
	}, rthttp.Services{
		Users:       users,
		Sessions:    postgres.NewSessionService(db),
		Orders:      orders,
		Portfolio:   portfolio,
		Invalidator: o.invalidator,
	})
	served := h
	if o.metrics != nil {
		served = o.metrics.Middleware(h)
	}
	srv := httptest.NewServer(served)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, handler: h, db: db, users: users, logs: logs, passwords: map[string]string{}, ids: map[string]string{}}
}

// adminOnDatabase returns a connection as the PostgreSQL admin (closed when the test ends)
// and the name of e's own database, for the tests that do to it what only an admin can
// (drop it, make it read-only).
func (e *env) adminOnDatabase() (*pgx.Conn, string) {
	e.t.Helper()
	ctx := context.Background()
	var name string
	if err := e.db.Pool().QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		e.t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { admin.Close(context.Background()) })
	return admin, name
}

// as returns e reporting to t (a fuzz target's or a subtest's T).
func (e *env) as(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

// addUser creates a user with a password of its own and returns its id. The row is
// written directly with a bcrypt hash of the minimum cost: logins then go through the real
// Authenticate (bcrypt reads the cost from the hash) without spending seconds per user
// under the race detector. TestLogin creates its user through UserService.CreateUser.
func (e *env) addUser(name string, role trading.Role) string {
	e.t.Helper()
	pw := "pw-" + name + "-secret"
	hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		e.t.Fatal(err)
	}
	var id string
	if err := e.db.Pool().QueryRow(context.Background(),
		`INSERT INTO users (username, password_hash, roles) VALUES ($1, $2, $3) RETURNING id::text`,
		name, string(hash), []string{string(role)}).Scan(&id); err != nil {
		e.t.Fatalf("create user %s: %v", name, err)
	}
	e.passwords[name] = pw
	e.ids[name] = id
	return id
}

// createUser creates a user through the user service, as `tradingd user add` does.
func (e *env) createUser(name string, role trading.Role) string {
	e.t.Helper()
	pw := "pw-" + name + "-secret"
	u, err := e.users.CreateUser(context.Background(), name, pw, role)
	if err != nil {
		e.t.Fatalf("create user %s: %v", name, err)
	}
	e.passwords[name] = pw
	e.ids[name] = u.ID.String()
	return u.ID.String()
}

// login returns the token pair of a user that addUser made.
func (e *env) login(name string) rthttp.TokenPair {
	e.t.Helper()
	r := e.do("POST", "/api/auth/login", "", map[string]string{"username": name, "password": e.passwords[name]})
	r.want(http.StatusOK)
	var tp rthttp.TokenPair
	r.decode(&tp)
	return tp
}

// token logs name in and returns its access token.
func (e *env) token(name string) string { return e.login(name).AccessToken }

type response struct {
	t      testing.TB
	status int
	header http.Header
	body   []byte
}

// do sends a request; body is marshalled as JSON unless it is a string or []byte (sent as
// is), and token, when set, goes into Authorization.
func (e *env) do(method, path, token string, body any, headers ...string) *response {
	e.t.Helper()
	var sent []byte
	switch b := body.(type) {
	case nil:
	case string:
		sent = []byte(b)
	case []byte:
		sent = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		sent = j
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(sent)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	// Every exchange of every test is also a check of openapi.json against the server.
	conform(e.t, exchange{method: method, path: path, reqHeader: req.Header, reqBody: sent, status: resp.StatusCode, header: resp.Header, body: b})
	return &response{t: e.t, status: resp.StatusCode, header: resp.Header, body: b}
}

func (r *response) want(status int) *response {
	r.t.Helper()
	if r.status != status {
		r.t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	return r
}

func (r *response) decode(v any) {
	r.t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		r.t.Fatalf("decode %s: %v", r.body, err)
	}
}

// problem checks that the response is a problem+json of status and returns it.
func (r *response) problem(status int) rthttp.Problem {
	r.t.Helper()
	r.want(status)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		r.t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var raw map[string]json.RawMessage
	r.decode(&raw)
	for _, k := range []string{"type", "title", "status", "detail"} {
		if _, ok := raw[k]; !ok {
			r.t.Fatalf("problem without %q: %s", k, r.body)
		}
	}
	var p rthttp.Problem
	r.decode(&p)
	if p.Status != status || p.Title == "" || p.Type == "" || p.Detail == "" {
		r.t.Fatalf("problem %+v for status %d", p, status)
	}
	if status == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") != "Bearer" {
		r.t.Fatalf("401 with WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
	}
	if _, ok := raw["errors"]; ok != (status == http.StatusUnprocessableEntity) {
		r.t.Fatalf("errors member present=%v on a %d: %s", ok, status, r.body)
	}
	return p
}

// fields returns the field names of a 422 problem.
func (r *response) fields() map[string]string {
	r.t.Helper()
	p := r.problem(http.StatusUnprocessableEntity)
	m := map[string]string{}
	for _, f := range p.Errors {
		m[f.Field] = f.Message
	}
	return m
}

// order is an order as a client reads it: decimals as strings, to check the wire format.
type order struct {
	ID             string  `json:"id"`
	ClientOrderID  *string `json:"client_order_id"`
	Symbol         string  `json:"symbol"`
	Side           string  `json:"side"`
	Quantity       string  `json:"quantity"`
	Price          string  `json:"price"`
	Status         string  `json:"status"`
	RequestedBy    string  `json:"requested_by"`
	DecidedBy      *string `json:"decided_by"`
	DecisionReason *string `json:"decision_reason"`
	CreatedAt      string  `json:"created_at"`
	UpdatedAt      string  `json:"updated_at"`
	DecidedAt      *string `json:"decided_at"`
	Trade          *trade  `json:"trade"`
}

type trade struct {
	ID          string `json:"id"`
	OrderID     string `json:"order_id"`
	Symbol      string `json:"symbol"`
	Side        string `json:"side"`
	Quantity    string `json:"quantity"`
	Price       string `json:"price"`
	RealizedPnL string `json:"realized_pnl"`
	ExecutedAt  string `json:"executed_at"`
}

// submit creates an order and returns it.
func (e *env) submit(token, symbol, side, qty, price string) order {
	e.t.Helper()
	r := e.do("POST", "/api/orders", token, map[string]string{"symbol": symbol, "side": side, "quantity": qty, "price": price})
	r.want(http.StatusCreated)
	var o order
	r.decode(&o)
	return o
}

// approve approves an order as the holder of token and returns the answer.
func (e *env) approve(token, id string) order {
	e.t.Helper()
	var o order
	e.do("POST", "/api/orders/"+id+"/approve", token, nil).want(http.StatusOK).decode(&o)
	return o
}

// trade submits as trader and approves as risk: one executed trade.
func (e *env) trade(traderTok, riskTok, symbol, side, qty, price string) order {
	e.t.Helper()
	return e.approve(riskTok, e.submit(traderTok, symbol, side, qty, price).ID)
}

// decEq compares a decimal string of a response with a wanted value.
func decEq(t testing.TB, what, got, want string) {
	t.Helper()
	g, err := decimal.NewFromString(got)
	if err != nil {
		t.Errorf("%s: %q is not a decimal string", what, got)
		return
	}
	if !g.Equal(decimal.RequireFromString(want)) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (r *response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }
