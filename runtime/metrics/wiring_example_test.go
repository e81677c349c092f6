package metrics_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/cache"
	tradinghttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/metrics"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/ratelimit"
	"github.com/findmy/trading-operator/runtime/redis"
)

// Example_wiring is how cmd/tradingd serve puts metrics, the Redis client, the cache and
// the rate limiter together. It is compiled with the tests (so it stays true to the APIs)
// but not run. Variables named like cfgX stand for the parsed settings.
func Example_wiring() {
	ctx := context.Background()
	logger := slog.Default()
	var (
		cfgDatabaseURL, cfgRedisURL   string // DATABASE_URL, REDIS_URL ("" when unset)
		cfgPositionsTTL, cfgSummTTL   time.Duration
		cfgTrustedProxies             []netip.Prefix
		cfgLogin, cfgTrading, cfgData int
		cfgGlobalMin, cfgGlobalDay    int
		rules                         trading.OrderRules
	)

	// 1. Metrics first: the pool's tracer is fixed when the pool is built.
	m := metrics.New(trading.Version)
	db, err := postgres.Open(ctx, postgres.Config{URL: cfgDatabaseURL, Tracer: m.QueryTracer()})
	if err != nil {
		return
	}
	m.WatchPool(db.Pool().Stat)
	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool()))

	// 2. Redis, only when REDIS_URL is set. Open fails only on a malformed URL; a Redis that
	// is down makes the client start degraded and recover by itself.
	var rc *redis.Client
	var remote cache.Remote // stays a nil interface without Redis (not a typed nil)
	if cfgRedisURL != "" {
		rc, err = redis.Open(cfgRedisURL)
		if err != nil {
			return // exit 2 naming REDIS_URL
		}
		defer rc.Close()
		rc.SetLogger(logger)
		m.SetRedisUp(rc.Healthy())
		rc.OnHealthChange(m.SetRedisUp)
		remote = rc
	}

	// 3. The read cache in front of the portfolio, and the invalidator of the approvals.
	portfolio := cache.NewPortfolio(postgres.NewPortfolioService(db), cache.Options{
		PositionsTTL: cfgPositionsTTL, SummaryTTL: cfgSummTTL, Remote: remote, Observer: m, Logger: logger,
	})
	defer portfolio.Close()
	m.WatchCache("l1", portfolio.L1Stats)
	if remote != nil {
		m.WatchCache("l2", portfolio.L2Stats)
	}
	orders := m.OrderService(postgres.NewOrderService(db, postgres.OrderServiceConfig{
		Invalidator: portfolio, Logger: logger,
	}))

	// 4. Rate limits (rc may be nil: per-process limits).
	limiter := ratelimit.New(ratelimit.Config{
		Login: cfgLogin, Trading: cfgTrading, Data: cfgData,
		GlobalPerMinute: cfgGlobalMin, GlobalPerDay: cfgGlobalDay, TrustedProxies: cfgTrustedProxies,
	}, ratelimit.Options{Redis: rc, Metrics: m, Logger: logger})

	// 5. The API: the route pattern goes to the metrics middleware from Observe (outside
	// authentication), the limiter runs in Guard (inside authentication, where the principal
	// is known), and the metrics middleware wraps the whole handler.
	api := tradinghttp.NewHandler(tradinghttp.Config{
		Rules:  rules,
		Logger: logger,
		Observe: []tradinghttp.Middleware{func(rt tradinghttp.Route, next http.Handler) http.Handler {
			return metrics.CaptureRoute(rt.Pattern, next)
		}},
		Guard: []tradinghttp.Middleware{func(rt tradinghttp.Route, next http.Handler) http.Handler {
			return limiter.Route(rt.Class, rt.Pattern, next)
		}},
	}, tradinghttp.Services{
		Users: postgres.NewUserService(db), Sessions: postgres.NewSessionService(db),
		Orders: orders, Portfolio: portfolio,
		// Invalidator is not set here: the order service already calls it (setting both
		// would invalidate twice, which is harmless but costs a round trip).
	})
	apiHandler := m.Middleware(api)

	// 6. Admin: /metrics beside /healthz and /readyz; a failed readiness check is counted.
	ready := func(ctx context.Context) error {
		if err := db.Ping(ctx); err != nil {
			m.HealthCheckFailed()
			return err
		}
		return nil // and say "redis: degraded" in the body when rc != nil && !rc.Healthy()
	}
	admin := tradinghttp.NewAdminHandler(ready)
	admin.Handle("GET /metrics", m.Handler())

	_, _ = apiHandler, admin
}
