package metrics

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// maxTables caps the table label: table names come from our own SQL, but a cap keeps the
// label set bounded whatever is sent through the pool.
const maxTables = 32

type tableSet struct {
	mu   sync.RWMutex
	seen map[string]struct{}
}

// label returns name when it is already known or there is room for it, else "other".
func (s *tableSet) label(name string) string {
	s.mu.RLock()
	_, ok := s.seen[name]
	n := len(s.seen)
	s.mu.RUnlock()
	if ok {
		return name
	}
	if n >= maxTables {
		return "other"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]struct{}{}
	}
	if len(s.seen) >= maxTables {
		return "other"
	}
	s.seen[name] = struct{}{}
	return name
}

type queryStartKey struct{}

type queryStart struct {
	class sqlClass
	at    time.Time
}

type tracer struct{ m *Metrics }

// QueryTracer returns the pgx.QueryTracer for postgres.Config.Tracer: db_queries_total by
// table and operation, db_query_duration_seconds by table.
// It is also a pgx.BatchTracer: the statements of a batch count the same.
func (m *Metrics) QueryTracer() pgx.QueryTracer { return tracer{m} }

var _ pgx.BatchTracer = tracer{}

func (t tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, queryStartKey{}, queryStart{class: t.m.classify(data.SQL), at: time.Now()})
}

type sqlClass struct{ op, table string }

// classify memoizes ClassifySQL: the statements are the few texts of our own code (a
// bounded number are remembered, the rest classified each time).
func (m *Metrics) classify(sql string) sqlClass {
	if v, ok := m.sqlClasses.Load(sql); ok {
		return v.(sqlClass)
	}
	op, table := ClassifySQL(sql)
	c := sqlClass{op, m.tables.label(table)}
	if m.sqlClassN.Add(1) <= 1000 {
		m.sqlClasses.Store(sql, c)
	}
	return c
}

func (t tracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	qs, ok := ctx.Value(queryStartKey{}).(queryStart)
	if !ok {
		return
	}
	t.record(qs.class, time.Since(qs.at))
}

// record counts one statement and its duration.
func (t tracer) record(c sqlClass, d time.Duration) {
	t.m.dbQueries.WithLabelValues(c.table, c.op).Inc()
	t.m.dbQueryDuration.WithLabelValues(c.table).Observe(d.Seconds())
}

// The statements of a batch (a pipeline: approve's transaction) are observed as their
// results arrive; each one's duration is the time since the previous result (or since the
// batch was sent), its share of the round trip.
type batchTrace struct{ last time.Time }

type batchStartKey struct{}

// TraceBatchStart implements pgx.BatchTracer.
func (t tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return context.WithValue(ctx, batchStartKey{}, &batchTrace{last: time.Now()})
}

// TraceBatchQuery implements pgx.BatchTracer.
func (t tracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	bt, ok := ctx.Value(batchStartKey{}).(*batchTrace)
	if !ok {
		return
	}
	now := time.Now()
	t.record(t.m.classify(data.SQL), now.Sub(bt.last))
	bt.last = now
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t tracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// ClassifySQL returns the operation (select, insert, update, delete, transaction, other)
// and the main table of a statement without parsing it: the first keyword, then the table
// after FROM, INTO or UPDATE. For a CTE (WITH ...) the first data-modifying statement in it
// decides (WITH t AS (INSERT INTO trades ...), p AS (UPDATE positions ...) SELECT ... is an
// insert into trades), else it is a select. No table (SELECT 1) gives "none", a shape it
// does not understand "other".
func ClassifySQL(sql string) (op, table string) {
	toks := tokens(skipSpaceAndComments(sql))
	if len(toks) == 0 {
		return "other", "other"
	}
	switch toks[0] {
	case "select":
		return "select", tableAfter(toks, "from")
	case "insert":
		return "insert", tableAfter(toks, "into")
	case "update":
		return "update", tableAfter(toks, "update")
	case "delete":
		return "delete", tableAfter(toks, "from")
	case "with":
		for i, t := range toks {
			switch t {
			case "insert":
				return "insert", tableAfter(toks[i:], "into")
			case "update":
				if i+1 < len(toks) && toks[i+1] != "set" { // not ON CONFLICT DO UPDATE SET
					return "update", tableAfter(toks[i:], "update")
				}
			case "delete":
				return "delete", tableAfter(toks[i:], "from")
			}
		}
		return "select", tableAfter(toks, "from")
	case "begin", "commit", "rollback", "savepoint", "release":
		return "transaction", "none"
	}
	return "other", "other"
}

// tokens lowercases s and splits it on white space and punctuation.
func tokens(s string) []string {
	return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		switch r {
		case ' ', '\t', '\n', '\r', '(', ')', ',', ';':
			return true
		}
		return false
	})
}

// tableAfter returns the first identifier that follows the keyword kw ("none" when kw is
// absent, "other" when what follows is not a plain table name).
func tableAfter(toks []string, kw string) string {
	found := false
	for i, t := range toks {
		if t != kw || i+1 >= len(toks) {
			continue
		}
		found = true
		name := toks[i+1]
		if name == "only" && i+2 < len(toks) {
			name = toks[i+2]
		}
		if notTable[name] {
			continue // FROM (SELECT ...), FROM LATERAL ...: look at the next one
		}
		name = strings.Trim(name, `"`)
		if j := strings.LastIndexByte(name, '.'); j >= 0 {
			name = name[j+1:] // schema-qualified
		}
		if isIdent(name) {
			return name
		}
		return "other"
	}
	if found {
		return "other"
	}
	return "none"
}

// notTable are the words after FROM that start something other than a table; the table is
// then the next FROM's. unnest(...) is the rows of arrays passed in (the batched statements
// and the marks' lookup): the table they are matched against comes later.
var notTable = map[string]bool{"select": true, "lateral": true, "with": true, "values": true, "unnest": true}

func skipSpaceAndComments(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		switch {
		case strings.HasPrefix(s, "--"):
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i+1:]
			} else {
				return ""
			}
		case strings.HasPrefix(s, "/*"):
			if i := strings.Index(s, "*/"); i >= 0 {
				s = s[i+2:]
			} else {
				return ""
			}
		default:
			return s
		}
	}
}

func isIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || (i > 0 && c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

var dbConnsDesc = prometheus.NewDesc("db_connections_active", "Connections of the pool in use (acquired).", nil, nil)

type poolCollector struct{ stat func() *pgxpool.Stat }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- dbConnsDesc }
func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(dbConnsDesc, prometheus.GaugeValue, float64(c.stat().AcquiredConns()))
}

// WatchPool reports db_connections_active from stat (pass db.Pool().Stat).
func (m *Metrics) WatchPool(stat func() *pgxpool.Stat) {
	m.reg.MustRegister(poolCollector{stat})
}

// BusinessStats are the book-wide gauges read from the database at scrape time.
type BusinessStats struct {
	PositionsActive map[string]int     // open (non-flat) positions by symbol
	PositionsValue  map[string]float64 // gross market value of open positions by quote currency
	OrdersPending   int
	DailyLoss       float64 // losses realized today (UTC), as a positive number
}

// BusinessSource computes BusinessStats; NewSQLBusiness is the PostgreSQL one.
type BusinessSource interface {
	BusinessStats(ctx context.Context) (BusinessStats, error)
}

var (
	positionsActiveDesc = prometheus.NewDesc("positions_active", "Open (non-flat) positions by symbol.", []string{"symbol"}, nil)
	positionsValueDesc  = prometheus.NewDesc("positions_total_value", "Gross market value of open positions at the mark price, by quote currency.", []string{"currency"}, nil)
	ordersPendingDesc   = prometheus.NewDesc("orders_pending_total", "Orders waiting for a risk decision.", nil, nil)
	dailyLossDesc       = prometheus.NewDesc("daily_loss_total", "Losses realized today (UTC) over all users, as a positive amount.", nil, nil)
)

// businessCollector runs the source at most every ttl, with a timeout, and serves the last
// good values in between (and when the database does not answer in time), so that scrapes
// from several Prometheus servers cost a few aggregate queries every few seconds at most.
type businessCollector struct {
	m       *Metrics
	src     BusinessSource
	ttl     time.Duration
	timeout time.Duration

	mu   sync.Mutex
	at   time.Time
	gen  uint64 // Metrics.bookGen when last was read
	last *BusinessStats
}

// WatchBusiness reports the business gauges from src, refreshed at most every 5 seconds,
// and on the first scrape after this process changed the book (BookChanged; the
// OrderService decorator calls it).
func (m *Metrics) WatchBusiness(src BusinessSource) {
	m.reg.MustRegister(&businessCollector{m: m, src: src, ttl: 5 * time.Second, timeout: 2 * time.Second})
}

func (c *businessCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- positionsActiveDesc
	ch <- positionsValueDesc
	ch <- ordersPendingDesc
	ch <- dailyLossDesc
}

func (c *businessCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	// Read again once this process changed the book (BookChanged), however recent the last
	// read: a scrape right after an approval showed orders_approved_total 1 next to the
	// order still pending and no position. The generation is read before the query, so a
	// change committed while it runs is read by the next scrape.
	gen := c.m.bookGen.Load()
	if c.last == nil || time.Since(c.at) >= c.ttl || gen != c.gen {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		s, err := c.src.BusinessStats(ctx)
		cancel()
		c.at = time.Now() // also after a failure: do not hammer a struggling database
		c.gen = gen
		if err != nil {
			slog.Warn("metrics: business gauges not refreshed", "err", err.Error())
		} else {
			c.last = &s
		}
	}
	s := c.last
	c.mu.Unlock()
	if s == nil {
		s = &BusinessStats{}
	}
	for sym, n := range s.PositionsActive {
		ch <- prometheus.MustNewConstMetric(positionsActiveDesc, prometheus.GaugeValue, float64(n), sym)
	}
	for cur, v := range s.PositionsValue {
		ch <- prometheus.MustNewConstMetric(positionsValueDesc, prometheus.GaugeValue, v, cur)
	}
	// A gauge that vanishes when it reaches zero reads as "no data", not as zero: the traded
	// symbols (Symbols) nobody holds, and their quote currencies, are reported at 0.
	if seeded := c.m.seeded.Load(); seeded != nil {
		for _, sym := range seeded.symbols {
			if _, ok := s.PositionsActive[sym]; !ok {
				ch <- prometheus.MustNewConstMetric(positionsActiveDesc, prometheus.GaugeValue, 0, sym)
			}
		}
		for _, cur := range seeded.quotes {
			if _, ok := s.PositionsValue[cur]; !ok {
				ch <- prometheus.MustNewConstMetric(positionsValueDesc, prometheus.GaugeValue, 0, cur)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(ordersPendingDesc, prometheus.GaugeValue, float64(s.OrdersPending))
	ch <- prometheus.MustNewConstMetric(dailyLossDesc, prometheus.GaugeValue, s.DailyLoss)
}

// Querier is what NewSQLBusiness needs (*pgxpool.Pool).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type sqlBusiness struct{ q Querier }

// NewSQLBusiness computes BusinessStats with three aggregate queries against tradingd's
// schema. Each is cheap: positions has one row per user and traded symbol; the pending
// count is an index-only scan of the pending range of orders_status_keyset_idx (migration
// 00005); today's losses read today's trades per
// traded symbol through trades_symbol_executed_idx.
func NewSQLBusiness(q Querier) BusinessSource { return sqlBusiness{q} }

// positionsSQL values open positions at the mark price (the symbol's latest trade).
// Money is summed as NUMERIC and only converted for the gauge (metrics are not a money path).
const positionsSQL = `
SELECT p.symbol, p.active, (p.gross_qty * coalesce(m.price, 0))::float8
FROM (SELECT symbol, count(*) AS active, sum(abs(quantity)) AS gross_qty
      FROM positions WHERE quantity <> 0 GROUP BY symbol) p
LEFT JOIN LATERAL (SELECT t.price FROM trades t WHERE t.symbol = p.symbol
                   ORDER BY t.executed_at DESC, t.id DESC LIMIT 1) m ON true`

const pendingSQL = `SELECT count(*) FROM orders WHERE status = 'pending'`

const dailyLossSQL = `
SELECT coalesce(-sum(t.realized_pnl), 0)::float8
FROM (SELECT DISTINCT symbol FROM positions) s
JOIN trades t ON t.symbol = s.symbol
WHERE t.executed_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  AND t.realized_pnl < 0`

func (b sqlBusiness) BusinessStats(ctx context.Context) (BusinessStats, error) {
	s := BusinessStats{PositionsActive: map[string]int{}, PositionsValue: map[string]float64{}}
	rows, err := b.q.Query(ctx, positionsSQL)
	if err != nil {
		return s, err
	}
	for rows.Next() {
		var sym string
		var n int
		var v float64
		if err := rows.Scan(&sym, &n, &v); err != nil {
			rows.Close()
			return s, err
		}
		s.PositionsActive[sym] = n
		cur := sym
		if _, quote, ok := strings.Cut(sym, "/"); ok {
			cur = quote
		}
		s.PositionsValue[cur] += v
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s, err
	}
	if err := b.q.QueryRow(ctx, pendingSQL).Scan(&s.OrdersPending); err != nil {
		return s, err
	}
	if err := b.q.QueryRow(ctx, dailyLossSQL).Scan(&s.DailyLoss); err != nil {
		return s, err
	}
	if len(s.PositionsValue) == 0 {
		s.PositionsValue["USD"] = 0 // keep the series present on an empty book
	}
	return s, nil
}
