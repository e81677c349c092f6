package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/cache"
	tradinghttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/jwt"
	"github.com/findmy/trading-operator/runtime/metrics"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/ratelimit"
	"github.com/findmy/trading-operator/runtime/redis"
)

// Server limits. They are not settings (api.md lists none): they protect the process from
// slow or oversized clients, and WriteTimeout leaves room for a query timeout plus bcrypt.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 32 << 10
	bodyLimit         = 64 << 10 // api.md: request bodies of at most 64 KiB

	// queryTimeout bounds every database call of a request, so that a dead database gives
	// 503 quickly instead of holding connections.
	queryTimeout = 5 * time.Second
	// readyTimeout bounds /readyz's ping: a probe must answer before the kubelet gives up.
	readyTimeout = 2 * time.Second
	// poolCloseBound is how long the exit waits for the pool to close after the drain.
	poolCloseBound = 3 * time.Second

	// startupWait is how long serve waits for an unreachable database at start, retrying
	// with backoff while /healthz is 200 and /readyz 503, before it gives up with exit 1.
	// A database that restarts with the application (a fresh cluster, a failover) does not
	// turn into a crash loop; one that never comes still surfaces as a failed process.
	startupWait     = 2 * time.Minute
	startupBackoff  = 500 * time.Millisecond
	startupMaxDelay = 10 * time.Second
)

// demoUsers are created by DEMO_USERS=true: well-known passwords for trying the API.
var demoUsers = []struct {
	name, password string
	role           trading.Role
}{
	{"trader1", "password123", trading.RoleTrader},
	{"trader2", "password456", trading.RoleTrader},
	{"risk1", "password789", trading.RoleRisk},
}

// Readiness states of the process, reported by /readyz.
const (
	stateStarting int32 = iota
	stateServing
	stateDraining
)

// serve runs the API until SIGTERM or SIGINT, then drains.
// defaultGCPercent is tradingd's GOGC when the environment sets none.
const defaultGCPercent = 400

func serve(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	// First of all, so that a SIGTERM at any point of the start is a clean stop.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cfg, err := Load(args, getenv)
	if err != nil {
		return err
	}
	keys, err := cfg.KeySet(os.ReadFile)
	if err != nil {
		return err
	}
	if err := parseDSN(cfg.DatabaseURL); err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	defer logFailure(logger, &err)
	logger.Info("starting tradingd", "version", trading.Version, "config", cfg)
	for _, p := range cfg.TrustedProxies {
		if p.Bits() == 0 {
			logger.Warn("TRUSTED_PROXIES includes every address ("+p.String()+"): any client can name its own IP in X-Forwarded-For and escape the per-IP login limit",
				"trusted_proxies", p.String())
		}
	}
	// Go collects whenever the heap has doubled (GOGC=100). tradingd's live heap is small
	// (tens of MB) and every request allocates, so it collected all the time: GOGC=400 served
	// 8% more cached reads per second for about 10 MB more memory (make bench). GOGC and
	// GOMEMLIMIT in the environment are the runtime's own and win.
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	// Go knows no container: a heap left to grow (GOGC=400) would meet the cgroup's memory
	// limit as an OOM kill. automemlimit sets the soft limit to AUTOMEMLIMIT (90%) of the
	// cgroup's limit (nothing without one), so that near it the collector works harder;
	// GOMEMLIMIT in the environment wins. A limit it cannot read it logs itself.
	if cfg.MemoryLimitRatio > 0 {
		_, _ = memlimit.Set(memlimit.WithLogger(logger), memlimit.WithRatio(cfg.MemoryLimitRatio))
	}
	// 0 was always taken as the default lifetime (the cache cannot be turned off); the CRD
	// now refuses it, and a stack or environment that still says 0 is told so.
	for name, ttl := range map[string]time.Duration{"CACHE_POSITIONS_TTL": cfg.CachePositionsTTL, "CACHE_SUMMARY_TTL": cfg.CacheSummaryTTL} {
		if ttl == 0 {
			logger.Warn("a cache lifetime of 0 does not turn the cache off; the default lifetime applies", "setting", name)
		}
	}

	// Metrics first: the pool's query tracer is fixed when the pool is built.
	m := metrics.New(trading.Version)
	db, err := postgres.Open(ctx, postgres.Config{
		Tracer:            m.QueryTracer(),
		URL:               cfg.DatabaseURL,
		MaxConns:          cfg.DBMaxConns,
		MinConns:          cfg.DBMinConns,
		MaxConnLifetime:   cfg.DBMaxConnLifetime,
		HealthCheckPeriod: cfg.DBHealthCheckPeriod,
		QueryTimeout:      queryTimeout,
	})
	if err != nil {
		return settingError("DATABASE_URL", errors.New(strings.TrimPrefix(trading.ErrorMessage(err), "DATABASE_URL ")))
	}
	// Also on the error paths; once, since a second pgxpool Close waits for the first.
	closePool := sync.OnceValue(func() bool { return closeWithin(db.Close, poolCloseBound) })
	defer closePool()
	m.WatchPool(db.Pool().Stat)
	m.Symbols(cfg.Symbols)
	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool()))

	// Redis is optional: without REDIS_URL the cache is L1 only and limits are per process.
	// Open fails only on a malformed URL; a Redis that is down starts degraded and the client
	// reconnects by itself.
	var rc *redis.Client
	var remote cache.Remote // a nil interface without Redis, never a typed nil
	if cfg.RedisURL != "" {
		// Before Open: its first ping, to a Redis that is down, already makes go-redis log.
		redis.LogLibraryTo(logger)
		rc, err = redis.OpenWith(cfg.RedisURL, redis.Options{Prefix: cfg.RedisKeyPrefix, Password: cfg.RedisPassword, RootCAs: cfg.RedisRootCAs})
		if err != nil {
			return settingError("REDIS_URL", err)
		}
		defer rc.Close()
		rc.SetLogger(logger)
		m.SetRedisUp(rc.Healthy())
		rc.OnHealthChange(m.SetRedisUp)
		remote = rc
	}

	// Bind both ports before waiting for anything, so that a port in use fails at once.
	apiLn, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR: %v", err)
	}
	defer apiLn.Close()
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("ADMIN_ADDR: %v", err)
	}

	var state atomic.Int32 // stateStarting
	checks := []tradinghttp.ReadyCheck{{
		Name: "process",
		Check: func(context.Context) error {
			switch state.Load() {
			case stateStarting:
				return trading.Errorf(trading.EUNAVAILABLE, "starting: waiting for the database")
			case stateDraining:
				return trading.Errorf(trading.EUNAVAILABLE, "shutting down")
			}
			return nil
		},
	}, {
		Name: "database",
		Check: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, readyTimeout)
			defer cancel()
			if err := db.Ping(ctx); err != nil {
				m.HealthCheckFailed()
				return err
			}
			return nil
		},
	}, {
		// Optional: a database that refuses writes (read-only, out of disk) still serves
		// reads; failing readiness would take every replica out of the Service and turn a
		// write outage into a full one. /readyz stays 200 and says why writes fail.
		Name: "database_writes", Optional: true,
		Check: func(context.Context) error {
			if why := db.WritesRefused(); why != "" {
				return trading.Errorf(trading.EUNAVAILABLE, "degraded: %s; reads still work", why)
			}
			return nil
		},
	}}
	if rc != nil {
		// Optional: Redis down degrades the service (reads skip L1 and go to the database, so
		// that no replica serves a view from before another replica's trade; limits are per
		// replica), and /readyz stays 200 saying so.
		checks = append(checks, tradinghttp.ReadyCheck{Name: "redis", Optional: true, Check: func(ctx context.Context) error {
			if !rc.Healthy() {
				return trading.Errorf(trading.EUNAVAILABLE, "degraded: %s; reads go to the database and rate limits are per replica meanwhile", rc.Problem())
			}
			// Answering, but too late for any call: the reads go to the database all the same,
			// and each rate-limit script call times out (OpTimeout too), so every request is
			// decided by this replica's own buckets, although Healthy() has not moved the
			// limiter over (rate_limit_local_fallback stays 0).
			if late := rc.Late(); late != "" {
				return trading.Errorf(trading.EUNAVAILABLE, "degraded: %s; reads go to the database and rate limits are per replica meanwhile", late)
			}
			return nil
		}})
	}
	adminMux := tradinghttp.NewAdminHandlerWithChecks(checks...)
	adminMux.Handle("GET /metrics", m.Handler())
	serveErr := make(chan error, 2)
	admin := newServer(adminMux, logger)
	// WrapListener: a request net/http cannot parse (431, 400) is answered with the headers
	// of every response and a problem, not net/http's text/plain.
	go func() { serveErr <- serveOn(admin, tradinghttp.WrapListener(adminLn), "admin") }()
	logger.Info("admin listening", "addr", adminLn.Addr().String())

	version, err := waitForSchema(ctx, db, logger)
	if err == nil {
		err = bootstrapUsers(ctx, cfg, postgres.NewUserService(db), logger)
	}
	if err != nil {
		shutdownAdmin(admin, logger)
		if ctx.Err() != nil { // SIGTERM while starting: a clean stop
			logger.Info("stopped before serving")
			return nil
		}
		return err
	}

	// The read cache in front of positions and summary; the order service invalidates the
	// requester's entries on every replica before an approve returns (read-your-writes).
	portfolio := cache.NewPortfolio(postgres.NewPortfolioService(db), cache.Options{
		PositionsTTL: cfg.CachePositionsTTL, SummaryTTL: cfg.CacheSummaryTTL, NoL1: !cfg.CacheL1,
		Remote: remote, Observer: m, Logger: logger,
	})
	defer portfolio.Close()
	m.WatchCache("l1", portfolio.L1Stats)
	if remote != nil {
		m.WatchCache("l2", portfolio.L2Stats)
	}
	orders := m.OrderService(postgres.NewOrderService(db, postgres.OrderServiceConfig{
		MaxDailyLoss: cfg.MaxDailyLoss, Invalidator: portfolio, Logger: logger, ObserveBatch: m.ObserveBatch,
	}))
	limiter := ratelimit.New(ratelimit.Config{
		Login: cfg.RateLimitLogin, Trading: cfg.RateLimitTrading, Data: cfg.RateLimitData,
		GlobalPerMinute: cfg.RateLimitGlobalPerMinute, GlobalPerDay: cfg.RateLimitGlobalPerDay,
		TrustedProxies: cfg.TrustedProxies,
	}, ratelimit.Options{Redis: rc, Metrics: m, Logger: logger})

	var sessionEvents tradinghttp.SessionEvents // an interface holding a nil *redis.Client is not nil
	if rc != nil {
		sessionEvents = rc // ended logins reach the other replicas over the cache's subscription
	}
	handler := tradinghttp.NewHandler(tradinghttp.Config{
		Rules:      cfg.Rules(),
		Tokens:     jwt.NewAuthority(keys, cfg.JWTIssuer, cfg.JWTAudience, cfg.AccessTokenTTL),
		RefreshTTL: cfg.RefreshTokenTTL,
		Logger:     logger,
		BodyLimit:  bodyLimit,
		ClientIP:   func(r *http.Request) netip.Addr { return ratelimit.ClientIP(r, cfg.TrustedProxies) },
		// Observe runs outside authentication (metrics see 401s too); Guard inside it, where
		// the principal is known for the per-user limits.
		Observe: []tradinghttp.Middleware{func(rt tradinghttp.Route, next http.Handler) http.Handler {
			return metrics.CaptureRoute(rt.Pattern, next)
		}},
		Guard: []tradinghttp.Middleware{func(rt tradinghttp.Route, next http.Handler) http.Handler {
			return limiter.Route(rt.Class, rt.Pattern, next)
		}},
		SessionEvents: sessionEvents,
	}, tradinghttp.Services{
		Users:     postgres.NewUserService(db),
		Sessions:  postgres.NewSessionService(db),
		Orders:    orders,
		Portfolio: portfolio,
		// No Invalidator here: the order service already invalidates before it returns.
	})
	api := newServer(m.Middleware(handler), logger)
	// The requests' contexts come from base, which the end of the grace period cancels with
	// tradinghttp.ErrShuttingDown before the connections are closed: a request cut off then
	// is the server's doing (503), not a client that went away (499).
	base, cancelBase := context.WithCancelCause(context.Background())
	defer cancelBase(nil)
	api.BaseContext = func(net.Listener) context.Context { return base }
	go func() { serveErr <- serveOn(api, tradinghttp.WrapListener(apiLn), "api") }()
	state.Store(stateServing)
	logger.Info("serving", "api_addr", apiLn.Addr().String(), "admin_addr", adminLn.Addr().String(),
		"schema_version", version)

	// Ended logins and their refresh tokens are deleted in the background, at once and then
	// every SessionPruneInterval, once no answer can depend on them (see postgres.SessionPruner).
	// Every replica runs it; one at a time does the work.
	pruneCtx, stopPruning := context.WithCancel(ctx)
	defer stopPruning()
	pruned := make(chan struct{})
	go func() {
		defer close(pruned)
		postgres.NewSessionPruner(db, cfg.AccessTokenTTL, logger).Run(pruneCtx, postgres.SessionPruneInterval)
	}()

	var failed error
	select {
	case <-ctx.Done():
	case failed = <-serveErr: // a listener died: drain the rest and exit non-zero
	}
	stop() // a second signal kills the process the default way
	// A batch in flight finishes (bounded by the query timeout) so that what it deleted is
	// logged; the round then ends and is waited for before the pool closes, within the
	// pool's bound.
	stopPruning()

	// Drain: /readyz turns 503 at once (the admin server keeps answering), the API stops
	// accepting and in-flight requests get up to SHUTDOWN_GRACE to finish.
	state.Store(stateDraining)
	logger.Info("shutting down: draining in-flight requests", "grace", cfg.ShutdownGrace)
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := api.Shutdown(graceCtx); err != nil {
		logger.Warn("shutdown grace period over: closing the connections still open", "err", err)
		cancelBase(tradinghttp.ErrShuttingDown)
		api.Close()
	}
	shutdownAdmin(admin, logger)
	closeWithin(func() { <-pruned }, poolCloseBound)
	if closePool() {
		logger.Info("database pool closed; stopped")
	} else {
		logger.Warn("database pool not closed: the database does not answer; stopped", "waited", poolCloseBound)
	}
	return failed
}

// closeWithin calls closeFn and waits for it at most bound, reporting whether it returned.
// Closing the pool says goodbye on every connection and waits for the connections that
// requests cut short are cleaning up; with the database hung (stopped, partitioned) pgx
// waits up to 15 s for each, so SIGTERM took about 20 s whatever SHUTDOWN_GRACE said. No
// request is left by then (the drain is over), and the exit closes the sockets anyway.
func closeWithin(closeFn func(), bound time.Duration) bool {
	done := make(chan struct{})
	go func() { closeFn(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(bound):
		return false
	}
}

func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler: h,
		// OPTIONS * goes to the handler too, which answers it with the headers every
		// response carries (net/http's own answer has none).
		DisableGeneralOptionsHandler: true,
		ReadHeaderTimeout:            readHeaderTimeout,
		ReadTimeout:                  readTimeout,
		WriteTimeout:                 writeTimeout,
		IdleTimeout:                  idleTimeout,
		MaxHeaderBytes:               maxHeaderBytes,
		ErrorLog:                     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// serveOn serves until Shutdown; only an unexpected failure is returned.
func serveOn(s *http.Server, ln net.Listener, name string) error {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server: %w", name, err)
	}
	return nil
}

func shutdownAdmin(s *http.Server, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		logger.Warn("admin server did not stop in time", "err", err)
		s.Close()
	}
}

// waitForSchema checks the schema version, waiting with backoff while the database cannot
// be reached (up to startupWait). An old schema, a refused login or a missing database
// are not going to fix themselves: they fail at once.
func waitForSchema(ctx context.Context, db *postgres.DB, logger *slog.Logger) (int64, error) {
	deadline := time.Now().Add(startupWait)
	delay := startupBackoff
	for attempt := 1; ; attempt++ {
		version, err := db.CheckSchema(ctx)
		switch {
		case err == nil && version > postgres.SchemaVersion:
			// Normal while an upgrade rolls out (the migration runs before the new pods),
			// and after a rollback: the migrations keep older runtimes working, but the
			// runbook's "set spec.runtime.image back" should be a choice, not an accident.
			logger.Warn("the database schema is newer than this binary's: an upgrade is rolling out, or this runtime is an older image",
				"schema_version", version, "binary_schema_version", postgres.SchemaVersion)
			return version, nil
		case err == nil:
			return version, nil
		case errors.Is(err, postgres.ErrSchemaTooOld):
			return 0, err // its message says to run `tradingd migrate`
		case ctx.Err() != nil:
			return 0, ctx.Err()
		case permanent(err):
			return 0, fmt.Errorf("database: %v", cause(err))
		case time.Now().Add(delay).After(deadline):
			return 0, fmt.Errorf("database unreachable for %s, giving up: %v", startupWait, cause(err))
		}
		logger.Warn("database not reachable yet; /readyz answers 503 until it is",
			"attempt", attempt, "retry_in", delay, "err", cause(err))
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, startupMaxDelay)
	}
}

// permanent reports a database error that waiting will not cure: authentication refused
// (SQLSTATE class 28) or a database that does not exist (3D000).
func permanent(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000")
}

// cause is the underlying error of a coded one, for logs (the coded message is the generic
// text meant for clients). pgx's errors name host, user and database, never the password.
func cause(err error) error {
	var te *trading.Error
	if errors.As(err, &te) && te.Err != nil {
		return te.Err
	}
	return err
}

// bootstrapUsers creates the demo users (DEMO_USERS) and the first admin
// (BOOTSTRAP_ADMIN_PASSWORD) when they do not exist; existing users are left alone.
func bootstrapUsers(ctx context.Context, cfg *Config, users trading.UserService, logger *slog.Logger) error {
	if cfg.DemoUsers {
		logger.Warn("DEMO_USERS is on: trader1, trader2 and risk1 have well-known passwords; never use this in production")
		for _, u := range demoUsers {
			created, err := users.EnsureUser(ctx, u.name, u.password, u.role)
			if err != nil {
				return fmt.Errorf("DEMO_USERS: creating %s: %v", u.name, cause(err))
			}
			if created {
				logger.Info("demo user created", "username", u.name, "role", u.role)
			}
		}
	}
	if cfg.BootstrapAdminPassword != "" {
		created, err := users.EnsureUser(ctx, "admin", cfg.BootstrapAdminPassword, trading.RoleAdmin)
		switch {
		case trading.ErrorCode(err) == trading.EINVALID:
			return settingError("BOOTSTRAP_ADMIN_PASSWORD", errors.New(trading.ErrorMessage(err)))
		case err != nil:
			return fmt.Errorf("BOOTSTRAP_ADMIN_PASSWORD: creating admin: %v", cause(err))
		case created:
			logger.Info("admin user created from BOOTSTRAP_ADMIN_PASSWORD", "username", "admin")
		default:
			logger.Info("user admin exists; BOOTSTRAP_ADMIN_PASSWORD left it unchanged")
		}
	}
	return nil
}
