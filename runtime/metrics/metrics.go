// Package metrics is tradingd's Prometheus instrumentation: a registry of the runtime's own
// (plus the Go and process collectors) holding every series of api.md's Operations section
// under exactly those names and labels, and the pieces that feed it: an HTTP middleware, a
// pgx query tracer, a pool collector, a collector of business gauges read from the database
// at scrape time, an order-service decorator, and the hooks the cache and the rate limiter
// call. No label takes unbounded values: endpoints are route patterns, tables are the ones
// our SQL names (capped), symbols come from the SYMBOLS whitelist, user ids never appear.
//
// Wiring (cmd/tradingd serve), in this order:
//
//	m := metrics.New(trading.Version)
//	db, err := postgres.Open(ctx, postgres.Config{URL: ..., Tracer: m.QueryTracer()})
//	m.WatchPool(db.Pool().Stat)                         // db_connections_active
//	m.WatchBusiness(metrics.NewSQLBusiness(db.Pool()))  // positions_*, orders_pending_total, daily_loss_total
//	var orders trading.OrderService = postgres.NewOrderService(db, ...)
//	orders = m.OrderService(orders)                     // trades_*, orders_approved/rejected, processing time
//	// cache.Options{Observer: m}, m.WatchCache("l1", portfolio.L1Stats), m.WatchCache("l2", portfolio.L2Stats)
//	// ratelimit.Options{Metrics: m}
//	adminMux.Handle("GET /metrics", m.Handler())
//	// /readyz: call m.HealthCheckFailed() whenever it answers 503.
//	// API handler: Middleware outermost (it sees every request, unknown routes and 401s
//	// included), and the route pattern handed to it from inside the router:
//	api := httpapi.NewHandler(httpapi.Config{ ...,
//		Observe: []httpapi.Middleware{func(rt httpapi.Route, next http.Handler) http.Handler {
//			return metrics.CaptureRoute(rt.Pattern, next)
//		}},
//	}, services)
//	apiServer.Handler = m.Middleware(api)
//	// (With a bare ServeMux instead: m.Middleware(...(metrics.CapturePattern(mux))).)
package metrics

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	trading "github.com/findmy/trading-operator/runtime"
)

// Buckets of request and query durations: the service's p99 is in milliseconds, so the
// resolution is there (0.5ms .. 2.5s).
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

// Metrics holds the registry and every series. Create one per process (tests may create
// several: nothing is global).
type Metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	dbQueries       *prometheus.CounterVec
	dbQueryDuration *prometheus.HistogramVec
	cacheHits       *prometheus.CounterVec
	cacheMisses     *prometheus.CounterVec
	seeded          atomic.Pointer[seededSymbols] // Symbols
	trades          *prometheus.CounterVec
	tradesPnL       *prometheus.GaugeVec
	ordersApproved  *prometheus.CounterVec
	ordersRejected  *prometheus.CounterVec
	orderProcessing *prometheus.HistogramVec
	appInfo         *prometheus.GaugeVec
	healthFailures  prometheus.Counter
	rateRejections  *prometheus.CounterVec
	rateFallback    prometheus.Gauge
	redisUp         prometheus.Gauge
	dbBatchSize     *prometheus.HistogramVec

	// bookGen counts this process's changes of the book (BookChanged): the business
	// gauges are read again on the next scrape after one.
	bookGen atomic.Uint64

	cacheMu     sync.Mutex
	cacheLevels map[string]func() (entries, bytes int64)

	tables     tableSet
	sqlClasses sync.Map // SQL text -> sqlClass
	sqlClassN  atomic.Int64
}

// New builds the registry with every contract series. version is app_info's label.
func New(version string) *Metrics {
	start := time.Now()
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "api_requests_total", Help: "API requests by method, route pattern and status code.",
		}, []string{"method", "endpoint", "status"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "api_request_duration_seconds", Help: "API request duration by method and route pattern.",
			Buckets: durationBuckets,
		}, []string{"method", "endpoint"}),
		dbQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "db_queries_total", Help: "Database queries by main table and operation.",
		}, []string{"table", "operation"}),
		dbQueryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "db_query_duration_seconds", Help: "Database query duration by main table.",
			Buckets: durationBuckets,
		}, []string{"table"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_hits_total", Help: "Cache hits by level (l1, l2) and key pattern (positions, summary).",
		}, []string{"cache_level", "key_pattern"}),
		cacheMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_misses_total", Help: "Cache misses by level (l1, l2) and key pattern (positions, summary).",
		}, []string{"cache_level", "key_pattern"}),
		trades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trades_total", Help: "Trades executed by this process, by symbol and side.",
		}, []string{"symbol", "side"}),
		// A gauge despite the _total name of the contract: realized P&L can be negative
		// and a Prometheus counter may only go up.
		tradesPnL: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trades_pnl_total", Help: "Realized P&L of the trades executed by this process, by symbol (quote currency).",
		}, []string{"symbol"}),
		ordersApproved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orders_approved_total", Help: "Orders approved through this process, by symbol.",
		}, []string{"symbol"}),
		ordersRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orders_rejected_total", Help: "Orders rejected through this process, by symbol.",
		}, []string{"symbol"}),
		orderProcessing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "order_processing_time_seconds", Help: "Time from an order's creation to its decision, by resulting status.",
			// Decisions are human (four eyes): seconds to hours.
			Buckets: []float64{.1, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}, []string{"status"}),
		appInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "app_info", Help: "Always 1; the version label says which build runs.",
		}, []string{"version"}),
		healthFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "health_check_failures_total", Help: "Readiness checks that answered 503.",
		}),
		rateRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rate_limit_rejections_total", Help: "Requests refused with 429, by rate-limit class.",
		}, []string{"class"}),
		rateFallback: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rate_limit_local_fallback", Help: "1 while rate limits are enforced per process because Redis is not answering (or not configured).",
		}),
		redisUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "redis_up", Help: "1 while Redis answers, 0 while the cache and the rate limits run degraded.",
		}),
		dbBatchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "db_batch_size", Help: "Writes combined into one statement or transaction, by operation (insert_orders, approve_orders).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
		}, []string{"operation"}),
		cacheLevels: map[string]func() (int64, int64){},
	}
	m.appInfo.WithLabelValues(version).Set(1)
	m.reg.MustRegister(
		m.requests, m.requestDuration, m.dbQueries, m.dbQueryDuration, m.cacheHits, m.cacheMisses,
		m.trades, m.tradesPnL, m.ordersApproved, m.ordersRejected, m.orderProcessing, m.appInfo,
		m.healthFailures, m.rateRejections, m.rateFallback, m.redisUp, m.dbBatchSize,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "uptime_seconds", Help: "Seconds since the process started serving.",
		}, func() float64 { return time.Since(start).Seconds() }),
		&cacheCollector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Series with labels appear only once used; the contract series must be visible from
	// the first scrape, so seed the label values that are known up front.
	for _, lvl := range []string{"l1", "l2"} {
		for _, p := range []string{"positions", "summary"} {
			m.cacheHits.WithLabelValues(lvl, p)
			m.cacheMisses.WithLabelValues(lvl, p)
		}
	}
	for _, c := range []string{"login", "trading", "data", "global_minute", "global_day"} {
		m.rateRejections.WithLabelValues(c)
	}
	return m
}

// Symbols seeds the per-symbol series at zero for every traded symbol (SYMBOLS), and the
// decision times of both outcomes, so that each appears from the first scrape on every
// replica: a series that shows up only after its first event makes rate() miss that event,
// and a replica that has not rejected anything yet would have no orders_rejected_total. The
// business gauges report 0 for these symbols while nobody holds them (positions_active) and
// for their quote currencies (positions_total_value).
func (m *Metrics) Symbols(symbols []string) {
	for _, sym := range symbols {
		for _, side := range []trading.Side{trading.Buy, trading.Sell} {
			m.trades.WithLabelValues(sym, string(side))
		}
		m.tradesPnL.WithLabelValues(sym)
		m.ordersApproved.WithLabelValues(sym)
		m.ordersRejected.WithLabelValues(sym)
	}
	for _, st := range []trading.OrderStatus{trading.StatusApproved, trading.StatusRejected} {
		m.orderProcessing.WithLabelValues(string(st))
	}
	seeded := &seededSymbols{symbols: slices.Clone(symbols)}
	for _, sym := range symbols {
		if _, quote, ok := strings.Cut(sym, "/"); ok && !slices.Contains(seeded.quotes, quote) {
			seeded.quotes = append(seeded.quotes, quote)
		}
	}
	m.seeded.Store(seeded)
}

// seededSymbols are the traded symbols and their quote currencies (BTC/USD: USD), which the
// business gauges report at 0 while nobody holds them.
type seededSymbols struct{ symbols, quotes []string }

// ObserveBatch records the size of a batch of database writes (postgres.OrderServiceConfig's
// ObserveBatch).
func (m *Metrics) ObserveBatch(operation string, size int) {
	m.dbBatchSize.WithLabelValues(operation).Observe(float64(size))
}

// Registry returns the registry (to register more collectors, or to gather in tests).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format (admin mux: GET /metrics).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// HealthCheckFailed counts a readiness check that answered 503.
func (m *Metrics) HealthCheckFailed() { m.healthFailures.Inc() }

// CacheHit counts a hit (cache.Observer).
func (m *Metrics) CacheHit(level, pattern string) { m.cacheHits.WithLabelValues(level, pattern).Inc() }

// CacheMiss counts a miss (cache.Observer).
func (m *Metrics) CacheMiss(level, pattern string) {
	m.cacheMisses.WithLabelValues(level, pattern).Inc()
}

// RateLimited counts a 429 of class.
func (m *Metrics) RateLimited(class string) { m.rateRejections.WithLabelValues(class).Inc() }

// SetRateLimitFallback sets whether rate limits run per process (Redis down or absent).
func (m *Metrics) SetRateLimitFallback(local bool) { m.rateFallback.Set(b2f(local)) }

// SetRedisUp records Redis' health (redis.Client.OnHealthChange).
func (m *Metrics) SetRedisUp(up bool) { m.redisUp.Set(b2f(up)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// WatchCache reports cache_entries and cache_size_bytes of level from stats at every scrape.
func (m *Metrics) WatchCache(level string, stats func() (entries, bytes int64)) {
	m.cacheMu.Lock()
	m.cacheLevels[level] = stats
	m.cacheMu.Unlock()
}

var (
	cacheEntriesDesc = prometheus.NewDesc("cache_entries", "Entries held per cache level.", []string{"cache_level"}, nil)
	cacheSizeDesc    = prometheus.NewDesc("cache_size_bytes", "Approximate bytes held per cache level.", []string{"cache_level"}, nil)
)

type cacheCollector struct{ m *Metrics }

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cacheEntriesDesc
	ch <- cacheSizeDesc
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.cacheMu.Lock()
	levels := make(map[string]func() (int64, int64), len(c.m.cacheLevels))
	for k, v := range c.m.cacheLevels {
		levels[k] = v
	}
	c.m.cacheMu.Unlock()
	if len(levels) == 0 {
		// The series exist (at zero) before a cache is wired, so that dashboards do not break.
		levels["l1"] = func() (int64, int64) { return 0, 0 }
	}
	for lvl, fn := range levels {
		e, b := fn()
		ch <- prometheus.MustNewConstMetric(cacheEntriesDesc, prometheus.GaugeValue, float64(e), lvl)
		ch <- prometheus.MustNewConstMetric(cacheSizeDesc, prometheus.GaugeValue, float64(b), lvl)
	}
}
