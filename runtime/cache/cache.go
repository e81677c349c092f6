// Package cache is the read cache in front of a trader's positions and summary: an
// in-process L1 (otter v2, TTL and a size bound in approximate bytes) and an optional shared
// L2 (Remote, implemented by runtime/redis) whose pub/sub channel carries invalidations to
// every replica.
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
// not reach Redis is remembered and replayed when Redis is back. What remains is bounded by
// the TTLs (positions 30s, summary 10s): while Redis is down, another replica may serve an
// L1 entry cached before the trade until it expires.
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/maypok86/otter/v2"

	trading "github.com/findmy/trading-operator/runtime"
)

// Remote is the shared L2 and the invalidation channel between replicas. *redis.Client
// (runtime/redis) implements it. Every method must bound its own time (a short timeout)
// and return at once while the remote is known to be down.
type Remote interface {
	// GetVersioned returns the version under versionKey and the value under key when it
	// was stored for that version (ok), in one round trip.
	GetVersioned(ctx context.Context, versionKey, key string) (version int64, val []byte, ok bool, err error)
	// SetVersioned stores val under key for version, for ttl.
	SetVersioned(ctx context.Context, key string, version int64, val []byte, ttl time.Duration) error
	// Bump increments the versions under versionKeys.
	Bump(ctx context.Context, versionKeys ...string) error
	// PublishInvalidation tells every other subscribed replica that userID's stale views are
	// stale and returns once they have all handled it (onInvalidate returned), or with an
	// error. The publisher's own onInvalidate is not called: it drops its entries before.
	PublishInvalidation(ctx context.Context, userID uuid.UUID, stale trading.Views) error
	// SubscribeInvalidations calls onSubscribe on every (re)subscription and onInvalidate for
	// every published invalidation until stop is called.
	SubscribeInvalidations(onSubscribe func(), onInvalidate func(userID uuid.UUID, stale trading.Views)) (stop func())
	// Healthy reports whether the remote is answering; false means degraded.
	Healthy() bool
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

// entry is an immutable cached value; callers get copies.
type entry struct {
	positions []trading.PositionView
	summary   *trading.Summary
	// json is the view encoded (json.Marshal of positions or summary), once per load: what
	// L2 stores and what runtime/http writes on a hit. Formatting a position's six decimals
	// costs more than the rest of a cache hit, and a cached view is read many times.
	json []byte
	// read is set once a reader got the entry: a background refresh loads entries that
	// nobody may read, and only an entry that was read is worth refreshing after the next
	// change (else every change would refresh what the previous refresh loaded, forever).
	read atomic.Bool
}

const stripes = 64

type stripe struct {
	// mu guards gens: the generation of each view of each user in this stripe.
	mu   sync.RWMutex
	gens map[uuid.UUID][kinds]uint64
}

// Portfolio is a trading.PortfolioService and trading.Invalidator that caches Positions
// and Summary per user. FindTrades passes through.
type Portfolio struct {
	next   trading.PortfolioService
	opts   Options
	l1     *otter.Cache[key, *entry]
	epoch  atomic.Uint64
	seed   maphash.Seed
	stripe [stripes]stripe
	log    *slog.Logger
	stop   func()

	pendingMu sync.Mutex
	pending   map[uuid.UUID]trading.Views // invalidations Redis did not get; replayed on resubscribe
	replaying atomic.Bool

	refreshes sync.WaitGroup // background reloads, waited for by Close

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
func NewPortfolio(next trading.PortfolioService, o Options) *Portfolio {
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
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if v := reflect.ValueOf(o.Remote); o.Remote != nil && v.Kind() == reflect.Pointer && v.IsNil() {
		o.Remote = nil // a nil *redis.Client passed as Remote means "no Redis"
	}
	p := &Portfolio{next: next, opts: o, seed: maphash.MakeSeed(), log: o.Logger, pending: map[uuid.UUID]trading.Views{}}
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
	p.stop = func() {}
	if o.Remote != nil {
		p.stop = o.Remote.SubscribeInvalidations(p.onSubscribe, func(u uuid.UUID, v trading.Views) { p.dropLocal(u, v) })
	}
	return p
}

// Close stops the invalidation subscription and waits for the background reloads.
func (p *Portfolio) Close() {
	p.stop()
	p.refreshes.Wait()
}

// weigh approximates the bytes an entry holds: a position view is a dozen decimals and a
// symbol, about 400 bytes with their big.Int backing; a summary about 300; plus the JSON.
func weigh(k key, e *entry) uint32 {
	if e.summary != nil {
		return uint32(64 + 300 + len(e.json))
	}
	return uint32(64 + 48 + 400*len(e.positions) + len(e.json))
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

func (p *Portfolio) l2Key(user uuid.UUID, k kind) string {
	return p.opts.KeyPrefix + k.String() + ":" + user.String()
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

// Positions returns userID's positions from L1, L2 or the database, in that order.
func (p *Portfolio) Positions(ctx context.Context, userID uuid.UUID) ([]trading.PositionView, error) {
	e, err := p.get(ctx, userID, kindPositions)
	if err != nil {
		return nil, err
	}
	return slices.Clone(e.positions), nil
}

// Summary returns userID's summary from L1, L2 or the database, in that order.
func (p *Portfolio) Summary(ctx context.Context, userID uuid.UUID) (*trading.Summary, error) {
	e, err := p.get(ctx, userID, kindSummary)
	if err != nil {
		return nil, err
	}
	s := *e.summary
	return &s, nil
}

// PositionsJSON is Positions encoded: exactly json.Marshal of what Positions returns. The
// bytes are shared by every reader of the cached entry and must not be modified; runtime/http
// writes them as they are instead of encoding the views again on every read.
func (p *Portfolio) PositionsJSON(ctx context.Context, userID uuid.UUID) ([]byte, error) {
	e, err := p.get(ctx, userID, kindPositions)
	if err != nil {
		return nil, err
	}
	return e.json, nil
}

// SummaryJSON is Summary encoded, under the same rules as PositionsJSON.
func (p *Portfolio) SummaryJSON(ctx context.Context, userID uuid.UUID) ([]byte, error) {
	e, err := p.get(ctx, userID, kindSummary)
	if err != nil {
		return nil, err
	}
	return e.json, nil
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
	e, ok := p.l1.GetIfPresent(ck)
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
	if r != nil && r.Healthy() {
		v, b, ok, err := r.GetVersioned(ctx, p.versionKey(ck.user, ck.kind), p.l2Key(ck.user, ck.kind))
		if err == nil {
			version, haveVersion = v, true
			if ok {
				e, err := decode(ck.kind, b)
				if err == nil {
					// Encoded again rather than served as stored: a replica of another version
					// may have written fields this one does not serve.
					e.json, err = encode(e)
				}
				if err == nil {
					p.observe(reader, true, "l2", ck.kind)
					return e, nil
				}
			}
		}
		p.observe(reader, false, "l2", ck.kind)
	}

	var e entry
	var err error
	if ck.kind == kindPositions {
		e.positions, err = p.next.Positions(ctx, ck.user)
		if e.positions == nil && err == nil {
			e.positions = []trading.PositionView{}
		}
	} else {
		e.summary, err = p.next.Summary(ctx, ck.user)
	}
	if err != nil {
		return nil, err
	}
	if e.json, err = encode(&e); err != nil {
		return nil, err // only a bug: every view type encodes
	}
	if haveVersion {
		// Stored under the version read before the database: if a change came in between,
		// the version has moved on and no reader will take this value.
		_ = r.SetVersioned(ctx, p.l2Key(ck.user, ck.kind), version, e.json, p.ttl(ck.kind))
	}
	return &e, nil
}

func encode(e *entry) ([]byte, error) {
	if e.summary != nil {
		return json.Marshal(e.summary)
	}
	return json.Marshal(e.positions)
}

func decode(k kind, b []byte) (*entry, error) {
	var e entry
	if k == kindSummary {
		e.summary = new(trading.Summary)
		return &e, json.Unmarshal(b, e.summary)
	}
	e.positions = []trading.PositionView{}
	return &e, json.Unmarshal(b, &e.positions)
}

// dropLocal makes userID's stale L1 entries unreachable (new generations) and removes them.
// It returns the views that had an entry that a reader got: the trader is reading them.
func (p *Portfolio) dropLocal(user uuid.UUID, stale trading.Views) (cached trading.Views) {
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
	if p.opts.NoRefresh || stale == 0 {
		return
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
}

func (p *Portfolio) onSubscribe() {
	p.flushAll()
	p.replayPending()
}

// replayPending starts a replay of the remembered invalidations, if any and none is running.
// Not on the subscriber's goroutine: a publish waits for this replica's acknowledgement.
func (p *Portfolio) replayPending() {
	p.pendingMu.Lock()
	n := len(p.pending)
	p.pendingMu.Unlock()
	if n > 0 && p.replaying.CompareAndSwap(false, true) {
		go p.replay()
	}
}

// replay sends the invalidations that Redis missed while it was down. A user leaves the
// pending set only once its invalidation went through.
func (p *Portfolio) replay() {
	defer p.replaying.Store(false)
	p.pendingMu.Lock()
	users := maps.Clone(p.pending)
	p.pendingMu.Unlock()
	sent := 0
	for u, v := range users {
		if _, err := p.invalidateRemote(context.Background(), u, v); err != nil {
			continue
		}
		sent++
		p.pendingMu.Lock()
		if p.pending[u] == v { // else a newer failure added views: keep them for the next replay
			delete(p.pending, u)
		} else {
			p.pending[u] &^= v
		}
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
	p.pendingMu.Unlock()
}

// InvalidateUser drops userID's stale cached views here, in L2 and in every other replica's
// L1 before it returns, then reloads them in the background. It never fails the caller (the
// change is already committed): when Redis cannot be reached it logs, remembers the user for
// a replay on reconnection, and returns nil; the TTL bounds what another replica may still
// serve.
func (p *Portfolio) InvalidateUser(ctx context.Context, userID uuid.UUID, stale trading.Views) error {
	stale &= trading.AllViews
	if stale == 0 {
		return nil
	}
	if p.opts.Remote == nil {
		p.refresh(userID, p.dropLocal(userID, stale))
		return nil
	}
	cached, err := p.invalidateRemote(ctx, userID, stale)
	p.refresh(userID, cached)
	if err != nil {
		p.remember(userID, stale)
		p.log.Warn("cache invalidation did not reach every replica; the TTL bounds staleness there",
			"user_id", userID.String(), "err", err.Error())
		return nil
	}
	// Redis works again although this replica's subscription may never have dropped (a
	// timeout, a slow replica): send what it missed now rather than at the next reconnect.
	p.replayPending()
	return nil
}

// invalidateRemote bumps the versions in Redis, then the local generations, then tells the
// other replicas (the order matters: see the package comment). The local generations are
// bumped whatever happens to Redis.
func (p *Portfolio) invalidateRemote(ctx context.Context, userID uuid.UUID, stale trading.Views) (cached trading.Views, err error) {
	r := p.opts.Remote
	keys := make([]string, 0, kinds)
	for k := range kinds {
		if stale&k.view() != 0 {
			keys = append(keys, p.versionKey(userID, k))
		}
	}
	err = r.Bump(ctx, keys...)
	cached = p.dropLocal(userID, stale)
	if err != nil {
		return cached, err
	}
	return cached, r.PublishInvalidation(ctx, userID, stale)
}

// Degraded reports whether the L2 is configured but not answering.
func (p *Portfolio) Degraded() bool {
	return p.opts.Remote != nil && !p.opts.Remote.Healthy()
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
