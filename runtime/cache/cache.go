// Package cache is the read cache in front of a trader's positions and summary: an
// in-process L1 (otter v2, TTL and a size bound in approximate bytes) and an optional shared
// L2 (Remote, implemented by runtime/redis) whose pub/sub channel carries invalidations to
// every replica.
//
// What is cached. A trader's book (trading.Book: positions and the summary's counters) per
// user, in L1 and L2, and each symbol's mark per symbol, in L1; every read values the one at
// the other. A trade changes one trader's book but its symbol's mark for every holder, so
// views cached with the marks of their load would show another trader's trade only when
// they expire. The JSON of a view is kept with the entry and reused while the marks of its
// positions have not changed (runtime/http writes it as it is).
//
// Marks. A trade's invalidation (InvalidateTrade) also names its symbol: the symbol's mark
// gets a new generation here and, through the same acknowledged message, in every replica
// before the approve returns, so the next read anywhere loads it again (one index probe per
// symbol, once per replica: otter's loader). A replica that missed the message (Redis
// down) drops every mark when Redis answers again after the silence and when the replay
// arrives (it names no symbol); marks live for the shorter of the two TTLs, which bounds
// the rest.
//
// Consistency. A submission, an approval and a rejection call InvalidateUser with the views
// they made stale (the summary; after an approval the positions too) before they return.
// InvalidateUser first bumps each stale view's version in Redis (L2 values carry the version
// they were loaded under and a reader accepts only the current one, so a slow loader's late
// write of an older value is never served), then the user's local generation of the view
// (part of every L1 key, so a load that started earlier can only fill an entry nobody reads
// any more), then publishes the invalidation; Remote.PublishInvalidation returns once every
// subscribed replica has bumped its generations (acknowledged pub/sub). So a read on any
// replica after InvalidateUser returned is fresh: its L1 key is new, and its load reads the
// Redis version (bumped after the change committed) before L2 or the database. In that
// order, no load can pair a new generation with an old version. Pub/sub is at most once: a
// replica flushes its whole L1 on every (re)subscription, and an invalidation that could
// not reach Redis is remembered and replayed when Redis is back. L1 answers only while this
// replica is subscribed and Redis answers (trusted): while Redis is down every read goes to
// the database, so a trade on another replica is read at once there too. A replica cannot
// tell at once that Redis went quiet (paused, partitioned: nothing arrives), so L1 also
// needs an answer from Redis within TrustWindow (the Remote's pinger keeps an idle
// replica's recent), and an invalidation that got no answer returns only once every
// replica's last answer is older than that (waitOutTrust): the requester's next read, on
// any replica, then comes from L2 or the database. Likewise an invalidation whose writes
// Redis refused (it answers but takes no write: READONLY, MISCONF, OOM) returns only once
// every replica must have met that refusal (Remote.RefusalKnownBy: each one's pinger
// writes) and so stopped trusting its caches. What remains is a lost message while
// Redis answers (the subscriber flushes on resubscription) and a partition that leaves one
// replica talking to Redis and another not: never past an entry's TTL (positions 30s,
// summary 10s).
//
// Refresh. After an invalidation the replica that made the change loads the stale views
// again in the background (the usual load: once per key, L2 filled), but only those it had
// cached and a reader had got: the trader who just traded reads them next, on whichever
// replica, and finds them in L2 instead of every replica missing to the database, while a
// burst of orders nobody looks at costs nothing. It changes no consistency rule above: the
// load starts after the invalidation returned, so it reads the committed change.
//
// Redis errors never fail a read: every Remote call is bounded by the Remote's own short
// timeout and skipped while it reports itself unhealthy; the read then uses L1 and the
// database. Concurrent misses for one key do the database work once (otter's loader); the
// load runs under context.WithoutCancel plus LoadTimeout so that the first caller going
// away does not fail the others, and callers get copies, never the cached value itself.
//
// Wiring (cmd/tradingd serve):
//
//	var remote cache.Remote          // nil without REDIS_URL: L1 only, invalidated locally
//	if rc != nil { remote = rc }      // rc is the *redis.Client from redis.Open
//	portfolio := cache.NewPortfolio(postgres.NewPortfolioService(db), cache.Options{
//		PositionsTTL: cfg.CachePositionsTTL, // CACHE_POSITIONS_TTL, default 30s
//		SummaryTTL:   cfg.CacheSummaryTTL,   // CACHE_SUMMARY_TTL, default 10s
//		Remote:       remote,
//		Observer:     m,                     // *metrics.Metrics: cache_hits_total / cache_misses_total
//		Logger:       logger,
//	})
//	defer portfolio.Close()
//	m.WatchCache("l1", portfolio.L1Stats) // cache_entries / cache_size_bytes
//	m.WatchCache("l2", portfolio.L2Stats)
//	orders := postgres.NewOrderService(db, postgres.OrderServiceConfig{..., Invalidator: portfolio})
//	// give `portfolio` (a trading.PortfolioService) to the HTTP server instead of the postgres one.
package cache

import (
	"context"
	"encoding/json"
	"hash/maphash"
	"log/slog"
	"maps"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/maypok86/otter/v2"
	"github.com/shopspring/decimal"
	"golang.org/x/time/rate"

	trading "github.com/findmy/trading-operator/runtime"
)

// Remote is the shared L2 and the invalidation channel between replicas. *redis.Client
// (runtime/redis) implements it. Every method must bound its own time (a short timeout)
// and return at once while the remote is known to be down.
type Remote interface {
	// GetVersioned returns the version under versionKey and the value under key when it
	// was stored for that version (ok), in one round trip. The version is opaque (the
	// Redis client mixes in an epoch that moves after every outage); a Bump changes it.
	GetVersioned(ctx context.Context, versionKey, key string) (version int64, val []byte, ok bool, err error)
	// SetVersioned stores val under key for version, for ttl.
	SetVersioned(ctx context.Context, key string, version int64, val []byte, ttl time.Duration) error
	// Bump increments the versions under versionKeys.
	Bump(ctx context.Context, versionKeys ...string) error
	// PublishInvalidation tells every other subscribed replica that userID's stale views are
	// stale, and when symbol is set that its mark moved, and returns once they have all
	// handled it (onInvalidate returned), or with an error. The publisher's own onInvalidate
	// is not called: it drops its entries before.
	PublishInvalidation(ctx context.Context, userID uuid.UUID, stale trading.Views, symbol string) error
	// SubscribeInvalidations calls onSubscribe on every (re)subscription, onLost when a
	// subscription ends, and onInvalidate for every published invalidation until stop is
	// called.
	SubscribeInvalidations(onSubscribe, onLost func(), onInvalidate func(userID uuid.UUID, stale trading.Views, symbol string)) (stop func())
	// Healthy reports whether the remote is answering; false means degraded.
	Healthy() bool
	// LastAnswer is when the remote last answered (kept recent by a pinger while it does),
	// within the bound of its own calls: a late reply proves nothing about whether an
	// invalidation would get through.
	LastAnswer() time.Time
	// ResumedAt is when the remote answered after its latest silence (about TrustWindow or
	// longer); the zero time when there was none. OnResume registers a function to run then.
	ResumedAt() time.Time
	OnResume(fn func())
	// RefusalKnownBy is when every replica must know that the remote answers but refuses
	// writes (each one's pinger writes at least every ping interval), after this replica met
	// that refusal; the zero time while it takes writes.
	RefusalKnownBy() time.Time
	// Unavailable reports whether err means that no answer came (a timeout, a refused or
	// broken connection), as opposed to an error reply.
	Unavailable(err error) bool
	// Stats counts the entries under a key prefix and their bytes (for metrics).
	Stats(ctx context.Context, prefix string, maxKeys int) (entries, bytes int64, err error)
}

// Observer is told about every lookup; *metrics.Metrics implements it. level is "l1" or
// "l2", pattern is "positions" or "summary".
type Observer interface {
	CacheHit(level, pattern string)
	CacheMiss(level, pattern string)
}

// Options configure a Portfolio. Zero values take the defaults.
type Options struct {
	PositionsTTL time.Duration // default 30s (CACHE_POSITIONS_TTL)
	SummaryTTL   time.Duration // default 10s (CACHE_SUMMARY_TTL)
	// NoL1 keeps nothing in process memory (CACHE_L1=false): reads go to the Remote (L2) or
	// the database. For several replicas without a Remote, which cannot tell each other
	// of a trade.
	NoL1 bool
	// MaxBytes bounds L1 by the approximate size of its values (default 64 MiB).
	MaxBytes uint64
	// LoadTimeout bounds one database load, detached from the caller's context (default 5s).
	LoadTimeout time.Duration
	// Remote is the L2 and invalidation channel; nil means L1 only, invalidated locally.
	Remote   Remote
	Observer Observer
	Logger   *slog.Logger
	// KeyPrefix is put in front of the L2 keys (default "cache:").
	KeyPrefix string
	// NoRefresh turns off the background reload of the views an invalidation dropped (see
	// the package comment); tests that count database loads use it.
	NoRefresh bool
	// TrustWindow (default 250ms): with a Remote, L1 answers only while the Remote answered
	// within this window. A replica cannot tell at once that Redis stopped answering (a
	// paused or partitioned Redis sends nothing), and an invalidation that cannot reach it
	// is lost to it; so an invalidation that fails waits, before it returns, until every
	// replica's last answer is older than this window (see invalidate). The Remote's pinger
	// must run well within it.
	TrustWindow time.Duration
	// Settle (default twice TrustWindow): after a silence of the Remote, neither L1 nor L2
	// answers until it has answered again for this long. A replica that approved a trade
	// during the silence could not bump the trader's versions nor tell the others; it
	// replays that as soon as Redis answers (and until then reads that trader from the
	// database itself), and the others wait this long for it.
	Settle time.Duration
	// Now is the clock that tells which UTC day it is (default time.Now): a summary loaded
	// on another day than the current one is not served (tests move it to the next day).
	Now func() time.Time
}

type kind uint8

const (
	kindPositions kind = iota
	kindSummary
	kinds
)

// view is the trading.Views bit of a kind.
func (k kind) view() trading.Views {
	if k == kindPositions {
		return trading.ViewPositions
	}
	return trading.ViewSummary
}

func (k kind) String() string {
	if k == kindPositions {
		return "positions"
	}
	return "summary"
}

// key is an L1 key: the user, the flush epoch and the user's generation of the view, so
// that an entry loaded before an invalidation can never be found afterwards.
type key struct {
	user  uuid.UUID
	epoch uint64
	gen   uint64
	kind  kind
}

// entry is a cached book (the open positions, or for the summary every position and the
// counters); the book is immutable, callers get views built from it.
type entry struct {
	book *trading.Book
	// rendered is the view of book at the marks it was rendered with, JSON-encoded: what
	// runtime/http writes while those marks hold. Formatting a position's six decimals
	// costs more than the rest of a cache hit, and a view is read many times per trade.
	rendered atomic.Pointer[rendering]
	// read is set once a reader got the entry: a background refresh loads entries that
	// nobody may read, and only an entry that was read is worth refreshing after the next
	// change (else every change would refresh what the previous refresh loaded, forever).
	read atomic.Bool
}

// rendering is an entry's view encoded at marks (one per position of the book, in order).
type rendering struct {
	marks []decimal.Decimal
	json  []byte
}

// markKey is an L1 key of a symbol's mark: the flush epoch and the symbol's generation, so
// that a mark loaded before the trade that moved it can never be found afterwards.
type markKey struct {
	symbol string
	epoch  uint64
	all    uint64 // markAll when the key was made: dropAllMarks moves every mark on
	gen    uint64
}

// mark is a cached mark; ok is false for a symbol without trades.
type mark struct {
	price decimal.Decimal
	ok    bool
}

const stripes = 64

type stripe struct {
	// mu guards gens: the generation of each view of each user in this stripe.
	mu   sync.RWMutex
	gens map[uuid.UUID][kinds]uint64
}

// Source is what a Portfolio reads on a miss: runtime/postgres's PortfolioService.
type Source interface {
	trading.PortfolioService
	trading.BookReader
}

// Portfolio is a trading.PortfolioService and trading.Invalidator that caches each user's
// book (per user, in L1 and L2) and each symbol's mark (per symbol, in L1), and values the
// one at the other on every read: a trade changes one user's book but its symbol's mark for
// every holder, so caching views valued at the marks of their load would show others'
// trades only once they expire. FindTrades passes through.
type Portfolio struct {
	next  Source
	opts  Options
	l1    *otter.Cache[key, *entry]
	marks *otter.Cache[markKey, mark]
	// markMu guards markGens (the generation of each symbol's mark) and markAll (a
	// generation of every mark at once).
	markMu   sync.RWMutex
	markGens map[string]uint64
	markAll  uint64
	epoch    atomic.Uint64
	seed     maphash.Seed
	stripe   [stripes]stripe
	log      *slog.Logger
	stop     func()

	// subscribed is true while the invalidation subscription is up (see trusted).
	subscribed atomic.Bool

	pendingMu sync.Mutex
	pending   map[uuid.UUID]trading.Views // invalidations Redis did not get; replayed when it answers again
	// pendingN is len(pending), read without the lock by every lookup.
	pendingN  atomic.Int64
	replaying atomic.Bool
	// missedWarn logs the invalidations Redis did not take at most every 10 s, with how many
	// (missed): during an outage every approval misses, and a line each flooded the logs
	// (about 80 a second in a soak).
	missedWarn rate.Sometimes
	missed     atomic.Int64

	refreshes sync.WaitGroup // background reloads, waited for by Close
	closed    chan struct{}  // closed by Close: the replay stops retrying
	closeOnce sync.Once

	l2statsMu sync.Mutex
	l2statsAt time.Time
	l2entries int64
	l2bytes   int64
}

var (
	_ trading.PortfolioService = (*Portfolio)(nil)
	_ trading.Invalidator      = (*Portfolio)(nil)
)

// NewPortfolio wraps next. With a Remote it subscribes to invalidations at once; call Close
// at shutdown.
func NewPortfolio(next Source, o Options) *Portfolio {
	if o.PositionsTTL <= 0 {
		o.PositionsTTL = 30 * time.Second
	}
	if o.SummaryTTL <= 0 {
		o.SummaryTTL = 10 * time.Second
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 64 << 20
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = 5 * time.Second
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = "cache:"
	}
	if o.TrustWindow <= 0 {
		o.TrustWindow = 250 * time.Millisecond
	}
	if o.Settle <= 0 {
		o.Settle = 2 * o.TrustWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if v := reflect.ValueOf(o.Remote); o.Remote != nil && v.Kind() == reflect.Pointer && v.IsNil() {
		o.Remote = nil // a nil *redis.Client passed as Remote means "no Redis"
	}
	p := &Portfolio{next: next, opts: o, seed: maphash.MakeSeed(), log: o.Logger, pending: map[uuid.UUID]trading.Views{},
		missedWarn: rate.Sometimes{Interval: 10 * time.Second},
		markGens:   map[string]uint64{}, closed: make(chan struct{})}
	for i := range p.stripe {
		p.stripe[i].gens = map[uuid.UUID][kinds]uint64{}
	}
	p.l1 = otter.Must(&otter.Options[key, *entry]{
		MaximumWeight: o.MaxBytes,
		Weigher:       weigh,
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[key, *entry]) time.Duration {
			return p.ttl(e.Key.kind)
		}),
	})
	// A mark lives as long as the shorter TTL: that bounds how long a replica that missed a
	// trade's invalidation (Redis down) shows the mark before it.
	p.marks = otter.Must(&otter.Options[markKey, mark]{
		MaximumSize:      10_000,
		ExpiryCalculator: otter.ExpiryWriting[markKey, mark](min(o.PositionsTTL, o.SummaryTTL)),
	})
	p.stop = func() {}
	if o.Remote != nil {
		// Redis answers after a silence: what this replica cached before it may have been
		// changed meanwhile by a trade whose invalidation reached nobody (marks included),
		// and what it could not deliver itself goes out now.
		o.Remote.OnResume(func() {
			p.flushAll()
			p.replayPending()
		})
		p.stop = o.Remote.SubscribeInvalidations(p.onSubscribe, func() { p.subscribed.Store(false) }, func(u uuid.UUID, v trading.Views, symbol string) {
			if symbol == "" && v&trading.ViewPositions != 0 {
				// A trade whose invalidation does not name its symbol: a replica of a version
				// before marks were cached per symbol, during a rolling upgrade (or a replay
				// after an outage). Any mark may have moved.
				p.dropAllMarks()
			}
			p.dropLocal(u, v, symbol)
		})
	}
	return p
}

// Close stops the invalidation subscription and waits for the background reloads.
func (p *Portfolio) Close() {
	p.closeOnce.Do(func() { close(p.closed) })
	p.stop()
	p.refreshes.Wait()
}

// weigh approximates the bytes an entry holds: a position is four decimals, a symbol and a
// time, about 250 bytes with their big.Int backing, and about as much again rendered.
func weigh(k key, e *entry) uint32 {
	return uint32(64 + 160 + 500*len(e.book.Positions))
}

func (p *Portfolio) ttl(k kind) time.Duration {
	if k == kindPositions {
		return p.opts.PositionsTTL
	}
	return p.opts.SummaryTTL
}

func (p *Portfolio) stripeOf(user uuid.UUID) *stripe {
	return &p.stripe[maphash.Bytes(p.seed, user[:])%stripes]
}

func (p *Portfolio) currentKey(user uuid.UUID, k kind) key {
	s := p.stripeOf(user)
	s.mu.RLock()
	g := s.gens[user][k]
	s.mu.RUnlock()
	return key{user: user, epoch: p.epoch.Load(), gen: g, kind: k}
}

// l2Key names a user's book in Redis. The "book-" names are not those of earlier versions,
// which stored valued views under "positions:" and "summary:": during a rolling upgrade
// neither reads the other's format. The version keys are shared, so both see every bump.
func (p *Portfolio) l2Key(user uuid.UUID, k kind) string {
	return p.opts.KeyPrefix + "book-" + k.String() + ":" + user.String()
}

// versionKey names the Redis version counter of a user's view; outside KeyPrefix so that
// the L2 statistics count values only.
func (p *Portfolio) versionKey(user uuid.UUID, k kind) string {
	return strings.TrimSuffix(p.opts.KeyPrefix, ":") + "-version:" + k.String() + ":" + user.String()
}

// FindTrades is not cached: it is paginated and read far less than positions.
func (p *Portfolio) FindTrades(ctx context.Context, f trading.TradeFilter) ([]*trading.Trade, string, error) {
	return p.next.FindTrades(ctx, f)
}

// Positions returns userID's open positions: the book from L1, L2 or the database, in that
// order, valued at the current marks.
func (p *Portfolio) Positions(ctx context.Context, userID uuid.UUID) ([]trading.PositionView, error) {
	e, marks, err := p.valued(ctx, userID, kindPositions)
	if err != nil {
		return nil, err
	}
	return e.book.Views(marks, false), nil
}

// Summary returns userID's summary: the book from L1, L2 or the database, in that order,
// valued at the current marks.
func (p *Portfolio) Summary(ctx context.Context, userID uuid.UUID) (*trading.Summary, error) {
	e, marks, err := p.valued(ctx, userID, kindSummary)
	if err != nil {
		return nil, err
	}
	s := e.book.Summary(marks)
	return &s, nil
}

// PositionsJSON is Positions encoded: exactly json.Marshal of what Positions returns. The
// bytes are shared by every reader while the marks stay the same and must not be modified;
// runtime/http writes them as they are instead of encoding the views on every read.
func (p *Portfolio) PositionsJSON(ctx context.Context, userID uuid.UUID) ([]byte, error) {
	return p.render(ctx, userID, kindPositions)
}

// SummaryJSON is Summary encoded, under the same rules as PositionsJSON.
func (p *Portfolio) SummaryJSON(ctx context.Context, userID uuid.UUID) ([]byte, error) {
	return p.render(ctx, userID, kindSummary)
}

// valued returns userID's cached book of kind k and the current marks of its symbols.
func (p *Portfolio) valued(ctx context.Context, user uuid.UUID, k kind) (*entry, trading.Marks, error) {
	e, err := p.get(ctx, user, k)
	if err != nil {
		return nil, nil, err
	}
	marks, err := p.marksOf(ctx, e.book)
	if err != nil {
		return nil, nil, err
	}
	return e, marks, nil
}

// render returns the JSON of userID's view of kind k: the entry's rendering when the marks
// of its positions are still those it was rendered at, else a new one (kept for the next
// reader). Renderings are compared by mark value, so a trade at the same price as the one
// before it changes nothing.
func (p *Portfolio) render(ctx context.Context, user uuid.UUID, k kind) ([]byte, error) {
	e, marks, err := p.valued(ctx, user, k)
	if err != nil {
		return nil, err
	}
	if r := e.rendered.Load(); r != nil && r.at(e.book, marks) {
		return r.json, nil
	}
	var v any
	if k == kindPositions {
		v = e.book.Views(marks, false)
	} else {
		s := e.book.Summary(marks)
		v = &s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err // only a bug: every view encodes
	}
	r := &rendering{marks: make([]decimal.Decimal, len(e.book.Positions)), json: b}
	for i, pos := range e.book.Positions {
		r.marks[i] = marks.MarkOf(pos)
	}
	e.rendered.Store(r)
	return b, nil
}

// at reports whether r was rendered at marks (a flat position's mark changes nothing).
func (r *rendering) at(b *trading.Book, marks trading.Marks) bool {
	for i, pos := range b.Positions {
		if !pos.Quantity.IsZero() && !marks.MarkOf(pos).Equal(r.marks[i]) {
			return false
		}
	}
	return true
}

// marksOf returns the marks of b's open positions from L1, loading the missing ones in one
// query. A flat position is worth nothing at any mark: the summary's closed positions need
// none (and a trade in their symbol then re-renders nothing).
func (p *Portfolio) marksOf(ctx context.Context, b *trading.Book) (trading.Marks, error) {
	marks := make(trading.Marks, len(b.Positions))
	var missing []markKey
	trusted := p.trusted()
	for _, pos := range b.Positions {
		if pos.Quantity.IsZero() {
			continue
		}
		k := p.currentMarkKey(pos.Symbol)
		if !trusted {
			missing = append(missing, k)
			continue
		}
		if m, ok := p.marks.GetIfPresent(k); ok {
			if m.ok {
				marks[pos.Symbol] = m.price
			}
			continue
		}
		missing = append(missing, k)
	}
	if len(missing) == 0 {
		return marks, nil
	}
	var loaded map[markKey]mark
	var err error
	if trusted {
		// otter runs one load per key for all concurrent callers, under the same detached
		// context as a book's load.
		loaded, err = p.marks.BulkGet(ctx, missing, otter.BulkLoaderFunc[markKey, mark](p.loadMarks))
	} else {
		// Another replica's trade may have moved any of them: load, keep nothing.
		loaded, err = p.loadMarks(ctx, missing)
	}
	if err != nil {
		return nil, err
	}
	for k, m := range loaded {
		if m.ok {
			marks[k.symbol] = m.price
		}
	}
	return marks, nil
}

func (p *Portfolio) loadMarks(ctx context.Context, keys []markKey) (map[markKey]mark, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.LoadTimeout)
	defer cancel()
	symbols := make([]string, len(keys))
	for i, k := range keys {
		symbols[i] = k.symbol
	}
	prices, err := p.next.Marks(ctx, symbols)
	if err != nil {
		return nil, err
	}
	out := make(map[markKey]mark, len(keys))
	for _, k := range keys {
		price, ok := prices[k.symbol]
		out[k] = mark{price: price, ok: ok}
	}
	return out, nil
}

func (p *Portfolio) currentMarkKey(symbol string) markKey {
	p.markMu.RLock()
	g, all := p.markGens[symbol], p.markAll
	p.markMu.RUnlock()
	return markKey{symbol: symbol, epoch: p.epoch.Load(), all: all, gen: g}
}

// dropMark makes symbol's cached mark unreachable (a new generation) and removes it.
func (p *Portfolio) dropMark(symbol string) {
	p.markMu.Lock()
	old, all := p.markGens[symbol], p.markAll
	p.markGens[symbol] = old + 1
	p.markMu.Unlock()
	p.marks.Invalidate(markKey{symbol: symbol, epoch: p.epoch.Load(), all: all, gen: old})
}

// dropAllMarks makes every cached mark unreachable and removes them.
func (p *Portfolio) dropAllMarks() {
	p.markMu.Lock()
	p.markAll++
	p.markMu.Unlock()
	p.marks.InvalidateAll()
}

// refreshing marks the context of a background reload: it is not a reader's lookup, so
// it does not count as a hit or a miss.
type refreshing struct{}

// isReader reports whether ctx is a reader's lookup, not a background refresh. It walks the
// context chain, so a lookup asks once.
func isReader(ctx context.Context) bool { return ctx.Value(refreshing{}) == nil }

func (p *Portfolio) observe(reader, hit bool, level string, k kind) {
	if p.opts.Observer == nil || !reader {
		return
	}
	if hit {
		p.opts.Observer.CacheHit(level, k.String())
	} else {
		p.opts.Observer.CacheMiss(level, k.String())
	}
}

func (p *Portfolio) get(ctx context.Context, user uuid.UUID, k kind) (*entry, error) {
	reader := isReader(ctx)
	ck := p.currentKey(user, k)
	if !p.trusted() || p.isPending(user) {
		p.observe(reader, false, "l1", k)
		// Each read loads for itself, and keeps nothing: joining a load already under way
		// could hand a reader what the database held before a trade another replica
		// approved after that load started, and no invalidation reaches us to prevent it.
		return p.load(ctx, ck)
	}
	e, ok := p.l1.GetIfPresent(ck)
	if ok && !p.ofToday(e.book, k) {
		// A summary of yesterday (cached before midnight): its daily counters start again.
		p.l1.Invalidate(ck)
		ok = false
	}
	if ok {
		p.observe(reader, true, "l1", k)
	} else {
		p.observe(reader, false, "l1", k)
		// otter collapses concurrent loads of one key into one call of the loader.
		var err error
		if e, err = p.l1.Get(ctx, ck, otter.LoaderFunc[key, *entry](p.load)); err != nil {
			return nil, err
		}
	}
	if reader && !e.read.Load() {
		e.read.Store(true)
	}
	return e, nil
}

// load fills one key from L2 or the database. It runs once for all concurrent callers of
// the key, detached from the first caller's cancellation.
func (p *Portfolio) load(ctx context.Context, ck key) (*entry, error) {
	reader := isReader(ctx)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.LoadTimeout)
	defer cancel()

	r := p.opts.Remote
	var version int64
	haveVersion := false // known before the database read: the version to store the value under
	if r != nil && r.Healthy() && p.settled() && !p.isPending(ck.user) {
		v, b, ok, err := r.GetVersioned(ctx, p.versionKey(ck.user, ck.kind), p.l2Key(ck.user, ck.kind))
		// Settled again after the answer: it may itself have been the first after a silence,
		// and then the version it carries may be one that a replay is about to bump.
		if err == nil && p.settled() {
			version, haveVersion = v, true
			if ok {
				if e, err := decode(b); err == nil && p.ofToday(e.book, ck.kind) {
					p.observe(reader, true, "l2", ck.kind)
					return e, nil
				}
			}
		}
		p.observe(reader, false, "l2", ck.kind)
	}

	book, err := p.next.Book(ctx, ck.user, ck.kind == kindSummary)
	if err != nil {
		return nil, err
	}
	if haveVersion {
		// Stored under the version read before the database: if a change came in between,
		// the version has moved on and no reader will take this value.
		if b, err := json.Marshal(book); err == nil {
			_ = r.SetVersioned(ctx, p.l2Key(ck.user, ck.kind), version, b, p.ttl(ck.kind))
		}
	}
	return &entry{book: book}, nil
}

// ofToday reports whether book, cached as a k, may still be served today: a summary counts
// the trades and realized P&L of its UTC day, so one loaded before midnight is not served
// after it, whatever its TTL says (one from a version that did not say its day neither).
// The day is the database's, the clock this replica's: around midnight, a clock that
// differs from the database's costs database reads until both have moved on, never an
// answer from another day.
func (p *Portfolio) ofToday(book *trading.Book, k kind) bool {
	return k != kindSummary || book.Day.Equal(trading.StartOfDay(p.opts.Now()))
}

func decode(b []byte) (*entry, error) {
	book := new(trading.Book)
	if err := json.Unmarshal(b, book); err != nil {
		return nil, err
	}
	if book.Positions == nil {
		book.Positions = []trading.Position{}
	}
	return &entry{book: book}, nil
}

// dropLocal makes userID's stale L1 entries, and the mark of symbol when a trade names one,
// unreachable (new generations) and removes them. It returns the views that had an entry
// that a reader got: the trader is reading them.
func (p *Portfolio) dropLocal(user uuid.UUID, stale trading.Views, symbol string) (cached trading.Views) {
	if symbol != "" {
		p.dropMark(symbol)
	}
	s := p.stripeOf(user)
	s.mu.Lock()
	old := s.gens[user]
	next := old
	for k := range kinds {
		if stale&k.view() != 0 {
			next[k]++
		}
	}
	s.gens[user] = next
	s.mu.Unlock()
	ep := p.epoch.Load()
	for k := range kinds {
		if stale&k.view() != 0 {
			if e, had := p.l1.Invalidate(key{user: user, epoch: ep, gen: old[k], kind: k}); had && e.read.Load() {
				cached |= k.view()
			}
		}
	}
	return cached
}

// refresh reloads userID's views in the background after an invalidation (see the package
// comment): those that were cached here, i.e. that the trader is reading; a burst of orders
// nobody looks at costs no reloads. A reload that a reader already started is joined.
func (p *Portfolio) refresh(user uuid.UUID, stale trading.Views) {
	if p.opts.NoRefresh || stale == 0 || !p.trusted() {
		return // untrusted: a reload would keep nothing, and L2 is most likely down too
	}
	p.refreshes.Add(1)
	go func() {
		defer p.refreshes.Done()
		ctx := context.WithValue(context.Background(), refreshing{}, true)
		for k := range kinds {
			if stale&k.view() != 0 {
				_, _ = p.get(ctx, user, k) // an error leaves the key empty: the next read loads it
			}
		}
	}()
}

// flushAll empties L1: called on every (re)subscription, because invalidations published
// while this replica was not subscribed are lost.
func (p *Portfolio) flushAll() {
	for i := range p.stripe {
		p.stripe[i].mu.Lock()
	}
	p.epoch.Add(1)
	for i := range p.stripe {
		p.stripe[i].mu.Unlock()
	}
	p.l1.InvalidateAll()
	p.marks.InvalidateAll()
}

func (p *Portfolio) onSubscribe() {
	p.flushAll()
	p.subscribed.Store(true) // after the flush: nothing cached before it is reachable
	p.replayPending()
}

// trusted reports whether L1 may answer: always without Redis (every change is made here
// and invalidated here); with Redis only while this replica is subscribed to the
// invalidations and Redis answers, because another replica's trade reaches this L1 through
// them alone. Otherwise a read goes to L2 (versioned, so never stale) or the database, and
// stores nothing in L1: the trader who just traded on another replica reads it at once,
// and when the subscription is back the L1 is flushed anyway.
func (p *Portfolio) trusted() bool {
	if p.opts.NoL1 {
		return false
	}
	return p.opts.Remote == nil || p.remoteTrusted()
}

// remoteTrusted: subscribed to the invalidations, and Redis answers, and settled: answered
// within the trust window (a Redis that stopped answering a moment ago is not yet known as
// down) and for Settle since its latest silence.
func (p *Portfolio) remoteTrusted() bool {
	return p.subscribed.Load() && p.opts.Remote.Healthy() && p.settled()
}

// settled reports whether the Remote has answered for Settle since its latest silence (or
// had none): the replicas that could not deliver invalidations during it have replayed them.
func (p *Portfolio) settled() bool {
	r := p.opts.Remote
	if time.Since(r.LastAnswer()) >= p.opts.TrustWindow {
		return false // silent now: the next answer may end the silence
	}
	at := r.ResumedAt()
	return at.IsZero() || time.Since(at) >= p.opts.Settle
}

// isPending reports whether this replica holds an invalidation of user that Redis has not
// had: the versions there are behind, so neither level may answer for that user here.
func (p *Portfolio) isPending(user uuid.UUID) bool {
	if p.pendingN.Load() == 0 {
		return false
	}
	p.pendingMu.Lock()
	_, ok := p.pending[user]
	p.pendingMu.Unlock()
	return ok
}

// replayPending starts a replay of the remembered invalidations, if any and none is running.
// Not on the subscriber's goroutine: a publish waits for this replica's acknowledgement.
func (p *Portfolio) replayPending() {
	if p.pendingN.Load() > 0 && p.replaying.CompareAndSwap(false, true) {
		go p.replayUntilDone()
	}
}

// replayUntilDone replays, and again every TrustWindow while invalidations are left (Redis
// still down, or not answering every replica) until the Portfolio closes: a trader whose
// trade reached nobody must not wait for the next trade, resubscription or silence to be
// served from the cache again.
func (p *Portfolio) replayUntilDone() {
	for {
		p.replay()
		if p.pendingN.Load() == 0 {
			p.replaying.Store(false)
			// One remembered after the look above found the flag still up: look again.
			if p.pendingN.Load() == 0 || !p.replaying.CompareAndSwap(false, true) {
				return
			}
			continue
		}
		select {
		case <-p.closed:
			p.replaying.Store(false)
			return
		case <-time.After(p.opts.TrustWindow):
		}
	}
}

// replay sends the invalidations that Redis missed while it was down. A user leaves the
// pending set only once its invalidation went through.
func (p *Portfolio) replay() {
	p.pendingMu.Lock()
	users := maps.Clone(p.pending)
	p.pendingMu.Unlock()
	sent := 0
	for u, v := range users {
		if _, err := p.invalidateRemote(context.Background(), u, v, ""); err != nil {
			continue
		}
		sent++
		p.pendingMu.Lock()
		if p.pending[u] == v { // else a newer failure added views: keep them for the next replay
			delete(p.pending, u)
		} else {
			p.pending[u] &^= v
		}
		p.pendingN.Store(int64(len(p.pending)))
		p.pendingMu.Unlock()
	}
	if sent > 0 {
		p.log.Info("replayed cache invalidations that Redis missed", "users", sent, "still_pending", len(users)-sent)
	}
}

// PendingInvalidations is the number of users whose invalidation Redis has not received
// yet (it failed and waits for a replay); readiness may report it.
func (p *Portfolio) PendingInvalidations() int {
	p.pendingMu.Lock()
	defer p.pendingMu.Unlock()
	return len(p.pending)
}

func (p *Portfolio) remember(u uuid.UUID, stale trading.Views) {
	p.pendingMu.Lock()
	p.pending[u] |= stale
	p.pendingN.Store(int64(len(p.pending)))
	p.pendingMu.Unlock()
}

// InvalidateUser drops userID's stale cached views here, in L2 and in every other replica's
// L1 before it returns, then reloads them in the background. It never fails the caller (the
// change is already committed): when Redis cannot be reached it logs, remembers the user for
// a replay on reconnection, and returns nil; the TTL bounds what another replica may still
// serve.
func (p *Portfolio) InvalidateUser(ctx context.Context, userID uuid.UUID, stale trading.Views) error {
	return p.invalidate(ctx, userID, stale, "")
}

// InvalidateTrade is InvalidateUser of every view for a trade of userID in symbol, whose
// mark it also drops here and in every other replica's L1 before it returns. The replay of
// one that Redis could not carry names no symbol (the receivers drop every mark), and every
// replica drops its marks after a silence of Redis anyway; the marks' TTL (the shorter of
// the two) bounds the rest.
func (p *Portfolio) InvalidateTrade(ctx context.Context, userID uuid.UUID, symbol string) error {
	return p.invalidate(ctx, userID, trading.AllViews, symbol)
}

func (p *Portfolio) invalidate(ctx context.Context, userID uuid.UUID, stale trading.Views, symbol string) error {
	stale &= trading.AllViews
	if stale == 0 && symbol == "" {
		return nil
	}
	if p.opts.Remote == nil {
		p.refresh(userID, p.dropLocal(userID, stale, symbol))
		return nil
	}
	r := p.opts.Remote
	cached, err := p.invalidateRemote(ctx, userID, stale, symbol)
	// No answer in time while Redis still answers (other commands, the pinger): a busy
	// machine, not an outage, and the other replicas go on trusting their L1 on those
	// answers. Try again at once rather than leave them stale until the TTL.
	for try := 0; try < 2 && err != nil && r.Unavailable(err) && time.Since(r.LastAnswer()) < p.opts.TrustWindow; try++ {
		var again trading.Views
		again, err = p.invalidateRemote(ctx, userID, stale, symbol)
		cached |= again
	}
	if err != nil && r.Unavailable(err) {
		// No answer: wait until no replica can be trusting its L1 any more. If Redis
		// answered meanwhile (a short pause), they may trust it again: try once more.
		failed := time.Now()
		p.waitOutTrust(ctx)
		if r.LastAnswer().After(failed) {
			var again trading.Views
			again, err = p.invalidateRemote(ctx, userID, stale, symbol)
			cached |= again
		}
	}
	if err != nil && !r.Unavailable(err) {
		// Redis answered and refused the version bump (READONLY after a failover, a failed
		// save, a full Redis): the other replicas' caches hold the old book under versions
		// that did not move, and no invalidation reaches them. They stop using their caches
		// once they meet the refusal themselves, at the latest at their pinger's next write:
		// answer after that, so that the requester's next read, on any replica, is fresh.
		waitUntil(ctx, r.RefusalKnownBy())
	}
	p.refresh(userID, cached)
	if err != nil {
		// Replayed as soon as Redis takes it (replayPending retries); until then this
		// replica reads the trader from the database, and the others wait Settle after the
		// silence before they trust a cache again.
		p.remember(userID, stale)
		p.replayPending()
		p.missed.Add(1)
		p.missedWarn.Do(func() {
			p.log.Warn("cache invalidations did not reach every replica yet; they are replayed when Redis answers",
				"count", p.missed.Swap(0), "user_id", userID.String(), "err", err.Error())
		})
		return nil
	}
	// Redis works again although this replica's subscription may never have dropped (a
	// timeout, a slow replica): send what it missed now rather than at the next reconnect.
	p.replayPending()
	// Load first: every approval passes here, and a Swap writes the shared word each time.
	if p.missed.Load() == 0 {
		return nil
	}
	if n := p.missed.Swap(0); n > 0 {
		// The misses since the last warning, which would otherwise be told only with the
		// next outage's first.
		p.log.Warn("more cache invalidations had missed Redis before it answered again; they are replayed", "count", n)
	}
	return nil
}

// waitOutTrust returns once no replica can still be trusting its L1 on the strength of an
// answer from before Redis stopped answering: Redis stopped at most about a ping interval
// after this replica's last answer, so every replica's last answer is older than that plus
// the trust window. The change is committed; the caller is answered after this, so that the
// requester's next read, on any replica, comes from L2 or the database. After the first
// moments of an outage it does not wait at all.
func (p *Portfolio) waitOutTrust(ctx context.Context) {
	waitUntil(ctx, p.opts.Remote.LastAnswer().Add(2*p.opts.TrustWindow))
}

// waitUntil returns at t (at once when it is past) or when ctx ends.
func waitUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// invalidateRemote bumps the versions in Redis, then the local generations, then tells the
// other replicas (the order matters: see the package comment). The local generations are
// bumped whatever happens to Redis. Marks live in L1 only, so a mark has no Redis version.
func (p *Portfolio) invalidateRemote(ctx context.Context, userID uuid.UUID, stale trading.Views, symbol string) (cached trading.Views, err error) {
	r := p.opts.Remote
	keys := make([]string, 0, kinds)
	for k := range kinds {
		if stale&k.view() != 0 {
			keys = append(keys, p.versionKey(userID, k))
		}
	}
	err = r.Bump(ctx, keys...)
	cached = p.dropLocal(userID, stale, symbol)
	if err != nil {
		return cached, err
	}
	return cached, r.PublishInvalidation(ctx, userID, stale, symbol)
}

// Degraded reports whether the L2 is configured but not answering.
func (p *Portfolio) Degraded() bool {
	return p.opts.Remote != nil && !p.remoteTrusted()
}

// L1Stats returns the L1's entry count and approximate bytes (for metrics.WatchCache).
func (p *Portfolio) L1Stats() (entries, bytes int64) {
	return int64(p.l1.EstimatedSize()), int64(p.l1.WeightedSize())
}

// L2Stats returns the L2's entry count and bytes, scanned at most every 10 seconds (for
// metrics.WatchCache); zero without a Remote.
func (p *Portfolio) L2Stats() (entries, bytes int64) {
	if p.opts.Remote == nil {
		return 0, 0
	}
	p.l2statsMu.Lock()
	defer p.l2statsMu.Unlock()
	if time.Since(p.l2statsAt) < 10*time.Second {
		return p.l2entries, p.l2bytes
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if e, b, err := p.opts.Remote.Stats(ctx, p.opts.KeyPrefix, 100000); err == nil {
		p.l2entries, p.l2bytes = e, b
	}
	p.l2statsAt = time.Now()
	return p.l2entries, p.l2bytes
}
