// Package http is tradingd's HTTP API: routing, authentication, JSON decoding and the one
// place where trading error codes become HTTP statuses. It owns no listener; cmd/tradingd
// puts NewHandler and NewAdminHandler behind its http.Servers.
package http

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/jwt"
)

// DefaultBodyLimit is the largest request body accepted (413 above it).
const DefaultBodyLimit = 64 << 10

// DefaultRefreshTTL is how long a refresh token lives when Config.RefreshTTL is 0 (30 days).
const DefaultRefreshTTL = 720 * time.Hour

// Config is what the API needs besides its services.
type Config struct {
	Rules  trading.OrderRules
	Tokens *jwt.Authority
	// RefreshTTL is the life of a refresh token; 0 means DefaultRefreshTTL.
	RefreshTTL time.Duration
	Logger     *slog.Logger
	// BodyLimit caps request bodies; 0 means DefaultBodyLimit.
	BodyLimit int64

	// Observe wraps every route outside authentication, so it sees every request the
	// route answers, 401s included (metrics). It also sees the 405 of a method that a
	// route's path does not serve, as that route's (the route of the first method in Allow;
	// r.Method is the request's), so that metrics count it under the route's pattern, not
	// with the paths no route has. Applied in order: the first is outermost.
	Observe []Middleware
	// Guard wraps every route inside authentication, so the principal is in the context
	// when the route needs one (rate limits per user; per client IP on login). It also wraps
	// authentication's refusals of a route that needs a principal (401; 503 when the login
	// could not be checked), then without one (rate limits per client IP before login).
	Guard []Middleware

	// ClientIP names the client of a request in the access log: ratelimit.ClientIP with the
	// trusted proxies, so that the log and the login limit blame the same address. nil: the
	// TCP peer.
	ClientIP func(*http.Request) netip.Addr

	// SessionEvents, when set (runtime/redis's client), carries ended logins between
	// replicas, so that every replica refuses their access tokens before the logout or the
	// refused refresh answers; without it the others learn within SessionCheckTTL.
	SessionEvents SessionEvents
}

// SessionEvents announces ended logins to the other replicas and hears theirs.
type SessionEvents interface {
	// PublishSessionEnded returns once every other replica has handled it, or with an error.
	PublishSessionEnded(ctx context.Context, sessionID uuid.UUID) error
	OnSessionEnded(handle func(sessionID uuid.UUID))
}

// Services are the domain services the handlers call.
type Services struct {
	Users     trading.UserService
	Sessions  trading.SessionService
	Orders    trading.OrderService
	Portfolio trading.PortfolioService
	// Invalidator, when set, is told about the requester before an approve answers so
	// that the requester's next positions and summary read their own write. May be nil.
	// runtime/postgres's order service can do the same (OrderServiceConfig.Invalidator):
	// give it to one of the two, not both, or every approve invalidates twice.
	Invalidator trading.Invalidator
}

// EncodedViews is implemented by a Portfolio that keeps its views JSON-encoded (runtime/cache
// does): the positions and summary handlers then write those bytes instead of encoding the
// views on every read, which for a few positions costs more than the rest of a cached read.
// The bytes must be exactly json.Marshal of what Positions and Summary return, and are not
// modified.
type EncodedViews interface {
	PositionsJSON(ctx context.Context, userID uuid.UUID) ([]byte, error)
	SummaryJSON(ctx context.Context, userID uuid.UUID) ([]byte, error)
}

// Rate-limit classes of the routes (api.md, Rate limits).
const (
	ClassNone    = ""        // not limited (openapi.json)
	ClassLogin   = "login"   // per client IP
	ClassTrading = "trading" // POST on orders, approve, reject
	ClassData    = "data"    // GET under /api
)

// Route describes one endpoint to the middleware that wraps it.
type Route struct {
	// Pattern is the ServeMux pattern, e.g. "POST /api/orders/{id}/approve"; the request's
	// r.Pattern equals it inside the route, so metrics label by it, never the raw path.
	Pattern string
	// Class is the rate-limit class.
	Class string
	// Auth is true when the route needs a bearer access token.
	Auth bool
}

// Middleware wraps the handler of one route.
type Middleware func(route Route, next http.Handler) http.Handler

// Server holds the handlers' dependencies.
type Server struct {
	cfg Config
	svc Services
	log *slog.Logger
	mux *http.ServeMux
	// encoded is svc.Portfolio when it implements EncodedViews, else nil.
	encoded  EncodedViews
	sessions *sessionCheck
	routes   []Route
	// wrongMethod holds, by route pattern, the 405 problem wrapped in that route's Observe
	// chain (see Config.Observe).
	wrongMethod map[string]http.Handler
}

// NewHandler returns the API handler (the :8080 port).
func NewHandler(cfg Config, svc Services) http.Handler {
	return newServer(cfg, svc)
}

func newServer(cfg Config, svc Services) *Server {
	// Missing wiring is a programming error: fail at start, not at the first request.
	if cfg.Tokens == nil || svc.Users == nil || svc.Sessions == nil || svc.Orders == nil || svc.Portfolio == nil {
		panic("http: NewHandler needs Config.Tokens and the Users, Sessions, Orders and Portfolio services")
	}
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = DefaultBodyLimit
	}
	if cfg.RefreshTTL <= 0 {
		cfg.RefreshTTL = DefaultRefreshTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = func(r *http.Request) netip.Addr {
			ap, _ := netip.ParseAddrPort(r.RemoteAddr)
			return ap.Addr().Unmap()
		}
	}
	s := &Server{cfg: cfg, svc: svc, log: cfg.Logger, mux: http.NewServeMux(), wrongMethod: map[string]http.Handler{}}
	s.encoded, _ = svc.Portfolio.(EncodedViews)
	s.sessions = newSessionCheck(svc.Sessions, cfg.Logger, cfg.Tokens.AccessTTL(), cfg.SessionEvents)

	s.route("GET /openapi.json", ClassNone, false, s.handleOpenAPI)

	s.route("POST /api/auth/login", ClassLogin, false, s.handleLogin)
	// Refresh and logout are authorized by the refresh token in the body: a client whose
	// access token has expired must still be able to use them.
	s.route("POST /api/auth/refresh", ClassLogin, false, s.handleRefresh)
	s.route("POST /api/auth/logout", ClassLogin, false, s.handleLogout)
	s.route("GET /api/auth/me", ClassData, true, s.handleMe)

	s.route("POST /api/orders", ClassTrading, true, s.handleCreateOrder)
	s.route("GET /api/orders", ClassData, true, s.handleListOrders)
	s.route("GET /api/orders/pending", ClassData, true, s.handlePendingOrders)
	s.route("GET /api/orders/{id}", ClassData, true, s.handleGetOrder)
	s.route("POST /api/orders/{id}/approve", ClassTrading, true, s.handleApprove)
	s.route("POST /api/orders/{id}/reject", ClassTrading, true, s.handleReject)

	s.route("GET /api/trades", ClassData, true, s.handleTrades)
	s.route("GET /api/positions", ClassData, true, s.handlePositions)
	s.route("GET /api/summary", ClassData, true, s.handleSummary)
	return s
}

// route registers h under pattern with the chain Observe → authentication → Guard → h.
func (s *Server) route(pattern, class string, auth bool, h http.HandlerFunc) {
	rt := Route{Pattern: pattern, Class: class, Auth: auth}
	s.routes = append(s.routes, rt)

	guard := func(next http.Handler) http.Handler {
		for i := len(s.cfg.Guard) - 1; i >= 0; i-- {
			next = s.cfg.Guard[i](rt, next)
		}
		return next
	}
	next := guard(h)
	if auth {
		// The refusal of a request without a valid token passes the Guard too, with no
		// principal in the context: a limiter counts it per client IP (api.md: "per client
		// IP before login"), so that hammering with garbage tokens is limited like a login.
		next = s.authenticate(next, guard(http.HandlerFunc(s.refuseUnauthenticated)))
	}
	observe := func(next http.Handler) http.Handler {
		for i := len(s.cfg.Observe) - 1; i >= 0; i-- {
			next = s.cfg.Observe[i](rt, next)
		}
		return next
	}
	s.mux.Handle(pattern, observe(next))
	s.wrongMethod[pattern] = observe(http.HandlerFunc(methodNotAllowed))
}

// methodNotAllowed is the problem of a 405; the mux has set Allow already.
func methodNotAllowed(w http.ResponseWriter, _ *http.Request) {
	writeProblem(w, http.StatusMethodNotAllowed, "method not allowed on this resource", nil)
}

// answerWrongMethod answers the mux's 405 for r through the Observe chain of the route that
// r's path matches under the first method of Allow (the mux answers 405 only for a path
// that some route serves with another method). The mux names no pattern for a 405, so
// the route is found by asking it again with that method.
func (s *Server) answerWrongMethod(w http.ResponseWriter, r *http.Request) {
	for m := range strings.SplitSeq(w.Header().Get("Allow"), ",") {
		probe := r.WithContext(r.Context()) // a shallow copy, to change its method
		probe.Method = strings.TrimSpace(m)
		if _, pattern := s.mux.Handler(probe); pattern != "" {
			if h, ok := s.wrongMethod[pattern]; ok {
				h.ServeHTTP(w, r)
				return
			}
		}
	}
	methodNotAllowed(w, r)
}

// Routes lists the routes the API serves, in registration order.
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// ServeHTTP is the outer chain every response passes through, unknown routes included:
// security headers and request id first, then the access log and panic recovery.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	setCommonHeaders(w.Header(), id)

	info := &requestInfo{id: id}
	r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
	sw := &statusWriter{ResponseWriter: w}

	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.ErrorContext(r.Context(), "panic in handler", "panic", v, "request_id", id, "route", r.Pattern)
			if !sw.wrote {
				s.problem(sw, r, http.StatusInternalServerError, "internal error", nil)
			}
		}
		s.logRequest(r, info, sw.status, time.Since(start))
	}()

	serveProblems(s.mux, sw, r, s.answerWrongMethod)
}

// serveProblems serves r through mux. ServeMux answers unknown paths and wrong methods in
// plain text; those are found first and answer through a writer that turns them into
// problem+json. The API and the admin port both serve this way. wrongMethod, when not nil,
// answers the mux's 405s (Allow is set) instead of the plain problem.
func serveProblems(mux *http.ServeMux, sw *statusWriter, r *http.Request, wrongMethod http.HandlerFunc) {
	if r.RequestURI == "*" {
		// The server-wide target: OPTIONS * asks what the server supports (net/http answers
		// it before any handler, without this package's headers, unless the http.Server has
		// DisableGeneralOptionsHandler, as tradingd's have); nothing else may use it.
		if r.Method == http.MethodOptions {
			sw.Header().Set("Content-Length", "0")
			sw.WriteHeader(http.StatusOK)
			return
		}
		writeProblem(sw, http.StatusBadRequest, "the request target * is for OPTIONS only", nil)
		return
	}
	if _, pattern := mux.Handler(r); pattern == "" {
		mux.ServeHTTP(&muxErrorWriter{statusWriter: sw, r: r, wrongMethod: wrongMethod}, r)
		return
	}
	mux.ServeHTTP(sw, r)
}

func (s *Server) logRequest(r *http.Request, info *requestInfo, status int, d time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	// 503 is a dependency that is down (logged with its cause as a warning where it was
	// answered): a warning too, so that an outage's thousands of requests do not bury the
	// errors that are bugs (500).
	level := slog.LevelInfo
	switch {
	case status == http.StatusServiceUnavailable:
		level = slog.LevelWarn
	case status >= 500:
		level = slog.LevelError
	}
	if !s.log.Enabled(r.Context(), level) {
		return // the attributes below cost allocations on every request
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", r.Pattern),
		slog.Int("status", status),
		slog.Duration("duration", d),
		slog.String("request_id", info.id),
	}
	if info.user != "" {
		attrs = append(attrs, slog.String("user_id", info.user))
	}
	// Who called, for an incident's questions (which address tried those logins?).
	if ip := s.cfg.ClientIP(r); ip.IsValid() {
		attrs = append(attrs, slog.String("client_ip", ip.String()))
	}
	s.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// requestInfo is filled in along the chain for the access log.
type requestInfo struct {
	id   string
	user string
}

type requestInfoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	if i, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		return i
	}
	return &requestInfo{}
}

// RequestID returns the id of the request that ctx belongs to ("" outside a request).
func RequestID(ctx context.Context) string { return infoFrom(ctx).id }

// statusWriter remembers the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (deadlines, flush).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// muxErrorWriter replaces ServeMux's plain-text 404 and 405 with problem+json; other
// answers of the mux (redirects of unclean paths) pass through.
type muxErrorWriter struct {
	*statusWriter
	swallowed   bool
	r           *http.Request
	wrongMethod http.HandlerFunc
}

func (w *muxErrorWriter) WriteHeader(code int) {
	switch code {
	case http.StatusNotFound:
		w.swallowed = true
		writeProblem(w.statusWriter, code, "no such resource", nil)
	case http.StatusMethodNotAllowed:
		w.swallowed = true // the mux has set Allow already
		if w.wrongMethod != nil {
			w.wrongMethod(w.statusWriter, w.r)
			return
		}
		methodNotAllowed(w.statusWriter, w.r)
	default:
		w.statusWriter.WriteHeader(code)
	}
}

func (w *muxErrorWriter) Write(b []byte) (int, error) {
	if w.swallowed {
		return len(b), nil
	}
	return w.statusWriter.Write(b)
}
