// Package redis connects tradingd to Redis (go-redis v9): the L2 cache storage, the pub/sub
// channel that carries cache invalidations between replicas, and the connection the shared
// rate limiter (runtime/ratelimit) runs its GCRA scripts on (batched: Batcher).
//
// Redis is optional and never a reason to fail a request. Every operation runs under a short
// timeout (Options.OpTimeout, 100ms by default); a connection error marks the client degraded
// (Healthy() == false) so that callers skip Redis at once instead of waiting for a timeout on
// every request, and a background pinger marks it healthy again when Redis answers: the
// runtime reconnects by itself. A Redis that answers but refuses writes (READONLY, MISCONF)
// marks it degraded too, until a write goes through.
//
// Wiring (cmd/tradingd serve, only when REDIS_URL is set; runtime/metrics'
// Example_wiring is the compiled version):
//
//	rc, err := redis.OpenWith(cfg.RedisURL, redis.Options{Prefix: cfg.RedisKeyPrefix,
//		Password: cfg.RedisPassword, RootCAs: cfg.RedisRootCAs}) // fails only on a malformed URL
//	if err != nil { exit 2 naming REDIS_URL }
//	defer rc.Close()
//	rc.SetLogger(logger)
//	m.SetRedisUp(rc.Healthy()); rc.OnHealthChange(m.SetRedisUp) // redis_up gauge
//	// /readyz stays 200 while Redis is down and says so: if !rc.Healthy() -> checks.redis
//	// "degraded: " + rc.Problem() + "; reads go to ...", status "degraded"; likewise while
//	// rc.Late() != "" (answers, but later than OpTimeout).
//	// cache.Options{Remote: rc} and ratelimit.Options{Redis: rc}; without REDIS_URL pass a nil
//	// cache.Remote (not a typed nil *Client) and a nil *Client.
package redis

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"
)

// Options tune a Client; the zero value is the production default.
type Options struct {
	// Prefix is put in front of every key and channel name, so that several deployments
	// (or several tests) can share one Redis.
	Prefix string
	// Password, when not empty, replaces the URL's password (which would have to be
	// percent-encoded there).
	Password string
	// RootCAs, when not nil, are the CAs that verify a rediss:// server's certificate
	// instead of the system's.
	RootCAs *x509.CertPool
	// OpTimeout bounds every cache operation (default 100ms): a slow Redis costs a read at
	// most this much before it falls back to L1 and the database.
	OpTimeout time.Duration
	// PingInterval is how often the background pinger checks Redis (default 100ms). It also
	// keeps LastAnswer recent on an idle replica, whose L1 is trusted only while Redis
	// answered it recently (runtime/cache's TrustWindow, 250ms): it must be well below that.
	PingInterval time.Duration
	// Silence (default 250ms, runtime/cache's TrustWindow): an answer after a silence longer
	// than this starts a new run of answers (ResumedAt, OnResume). A replica that could not
	// reach Redis meanwhile may hold invalidations that it has not delivered yet.
	Silence time.Duration
	// Logger receives one line per health transition (default slog.Default()).
	Logger *slog.Logger
}

// Client is a Redis connection with health tracking. It is safe for concurrent use.
type Client struct {
	rdb *goredis.Client
	// acks carries the acknowledged invalidations (PUBLISH's wait in BLPOP, the
	// subscribers' acknowledgements) on a pool of its own: a wait holds its connection
	// until every replica answered, and under load such waits must neither starve the
	// cache and the limiter of connections nor wait behind them (which made a busy
	// replica's acknowledgement miss its deadline: a stale read elsewhere).
	acks *goredis.Client
	// ackPrefix starts the ack keys of this client's invalidations; a random id in it names
	// the client (see pubsub.go).
	ackPrefix string
	// channel carries the invalidations (see channel in pubsub.go).
	channel string
	opts    Options

	healthy atomic.Bool
	probing atomic.Bool
	// writesRefused: Redis answers but refuses writes (writeRefusal). Only a write that
	// goes through clears it (Ping), not the replies to reads or PINGs that such a Redis
	// still gives.
	writesRefused atomic.Bool
	// refusedAt is when this client met the refusal that writesRefused records, in
	// nanoseconds since start (RefusalKnownBy); 0 while writes go through. takenMu makes one
	// write that goes through end it (writesWentThrough).
	refusedAt atomic.Int64
	takenMu   sync.Mutex
	// probeForbidden: an ACL refused the write probe (NOPERM); Ping uses PING instead.
	probeForbidden atomic.Bool
	// problem says why the client is degraded (Problem).
	problem atomic.Pointer[string]
	// lastAnswer is when Redis last answered a command of rdb, in nanoseconds since start
	// (monotonic: a wall clock stepped back must not make an old answer look recent); any
	// reply, error replies included, proves that it was there. 0: never.
	start      time.Time
	lastAnswer atomic.Int64
	// resumed is when Redis answered after a silence (Options.Silence), in the same units;
	// 0: it has answered without one since start.
	resumed atomic.Int64
	// silences counts the silences Redis ended (answeredAt); epochAt is the count up to
	// which the L2 epoch has been moved on since (see GetVersioned in store.go).
	silences    atomic.Int64
	epochAt     atomic.Int64
	resumeHooks []func()
	logMu       sync.Mutex
	log         *slog.Logger

	hooksMu sync.Mutex
	hooks   []func(healthy bool)
	// transMu serializes health transitions and their hooks (setHealthy).
	transMu sync.Mutex

	// sessionEnded handles the ended logins other clients announce (OnSessionEnded).
	sessionEnded atomic.Pointer[func(uuid.UUID)]

	stop chan struct{}
	done sync.WaitGroup
	once sync.Once
}

// Open parses url (redis://[user:password@]host:port/db or rediss://) and starts a client
// with production defaults. It does not fail when Redis is down: the client starts degraded
// and recovers when Redis answers. An error means a malformed URL.
func Open(url string) (*Client, error) {
	return OpenWith(url, Options{})
}

// CheckURL says what go-redis finds wrong with url (an option it does not take, a value it
// cannot read), as Open would meet it, or nil: so that a start refuses it at once, in one
// line naming the setting. Its messages name options and echo no password.
func CheckURL(url string) error {
	if _, err := goredis.ParseURL(url); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "redis: "))
	}
	return nil
}

// OpenWith is Open with options.
func OpenWith(url string, o Options) (*Client, error) {
	ro, err := goredis.ParseURL(url)
	if err != nil {
		// ParseURL errors do not echo the password, but keep the message generic anyway.
		return nil, fmt.Errorf("REDIS_URL is not a valid redis:// URL")
	}
	if o.Password != "" {
		ro.Password = o.Password
	}
	if o.RootCAs != nil {
		if ro.TLSConfig == nil {
			return nil, fmt.Errorf("a CA for Redis needs a rediss:// URL")
		}
		ro.TLSConfig.RootCAs = o.RootCAs
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 100 * time.Millisecond
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 100 * time.Millisecond
	}
	if o.Silence <= 0 {
		o.Silence = 250 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// Fail fast: one retry at most, short dials. The per-operation context deadline is the
	// real bound (ContextTimeoutEnabled); ReadTimeout is only a ceiling for blocking commands.
	ro.MaxRetries = 1
	ro.DialTimeout = 500 * time.Millisecond
	ro.ReadTimeout = time.Second
	ro.WriteTimeout = time.Second
	ro.PoolTimeout = 200 * time.Millisecond
	ro.ContextTimeoutEnabled = true
	ro.DisableIdentity = true
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	c := &Client{rdb: goredis.NewClient(ro), opts: o, log: o.Logger, stop: make(chan struct{}), start: time.Now(),
		ackPrefix: o.Prefix + "inv-ack:" + hex.EncodeToString(id) + ":", channel: channel(o.Prefix, ro.DB)}
	ackOpts := *ro
	ackOpts.PoolSize = ackPoolSize // dialled on demand: an idle replica holds none
	ackOpts.PoolTimeout = AckTimeout
	c.acks = goredis.NewClient(&ackOpts)
	c.rdb.AddHook(answerHook{c})

	ctx, cancel := context.WithTimeout(context.Background(), 2*o.OpTimeout+ro.DialTimeout)
	_, err = c.probe(ctx)
	cancel()
	c.healthy.Store(err == nil)
	if writeRefusal(err) != nil {
		c.refusedAt.Store(int64(time.Since(c.start)))
		c.writesRefused.Store(true)
	}
	c.noteProblem(err)
	if err != nil {
		c.logger().Warn("redis cannot be used; cache and rate limits run degraded until it can", "addr", ro.Addr, "problem", c.Problem())
	}
	c.done.Add(1)
	go c.pinger()
	return c, nil
}

// SetLogger replaces the logger (for health transitions).
func (c *Client) SetLogger(l *slog.Logger) {
	c.logMu.Lock()
	c.log = l
	c.logMu.Unlock()
}

func (c *Client) logger() *slog.Logger {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log
}

// Redis returns the underlying go-redis client (for redis_rate and benchmarks).
func (c *Client) Redis() *goredis.Client { return c.rdb }

// Prefix returns the key prefix of the client.
func (c *Client) Prefix() string { return c.opts.Prefix }

// OpTimeout is the bound of one operation.
func (c *Client) OpTimeout() time.Duration { return c.opts.OpTimeout }

// Close stops the pinger and the subscriptions and closes the connections.
//
// The connections are closed before Close waits for the pinger and the subscriptions: with
// Redis hung (stopped, partitioned) a probe or a resubscription in flight waits for its read
// and dial timeouts, which a cancelled context does not cut short, and a replica took 2 to
// 4 s (once 10 s) to exit after its last line ("database pool closed; stopped"). Closed,
// every read fails at once; what fails so after the stop says nothing about Redis (closing).
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		err = errors.Join(c.rdb.Close(), c.acks.Close())
		c.done.Wait()
	})
	return err
}

// closing reports whether Close has begun: from then on errors come from the closed
// connections, and no health transition is recorded (nor logged, nor told to the hooks).
func (c *Client) closing() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

// Ping checks Redis now (readiness probes, the pinger) and updates the health state. It
// checks with a write that changes nothing (probe): a Redis that answers PING may still
// refuse writes (a replica after a failover, a failed save, a full Redis), and every replica
// must notice that within a ping interval whatever its traffic, since another replica's
// trade reaches it neither as a version bump nor as an invalidation then (see
// RefusalKnownBy). The first write that goes through after a refusal ends it.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	started := time.Now()
	wrote, err := c.probe(ctx)
	if wrote && err == nil {
		c.writesWentThrough()
	}
	c.probed(started, err)
	return err
}

// probe sends the health check: a SET of writeProbeKey with XX and a 1 ms TTL. The key does
// not exist, so the SET changes nothing and is neither logged to the AOF nor sent to
// replicas (a PING's cost, but for the key lookup); Redis still refuses it as a write where
// it refuses writes (READONLY, MISCONF, NOREPLICAS) and, being a command that may use
// memory, where it is full (OOM), before looking at the key. Should the key exist after
// all, the SET makes it expire in a millisecond. An ACL that does not let this client write
// the key (NOPERM) says nothing about Redis: the client then checks with PING from then on
// (wrote false), and says so once.
func (c *Client) probe(ctx context.Context) (wrote bool, err error) {
	if c.probeForbidden.Load() {
		return false, c.rdb.Ping(ctx).Err()
	}
	err = c.rdb.SetArgs(ctx, c.opts.Prefix+writeProbeKey, "", goredis.SetArgs{Mode: "XX", TTL: time.Millisecond}).Err()
	if errors.Is(err, goredis.Nil) { // not set: the key does not exist, as expected
		err = nil
	}
	var reply goredis.Error
	if errors.As(err, &reply) && strings.HasPrefix(reply.Error(), "NOPERM") {
		if !c.probeForbidden.Swap(true) {
			c.logger().Warn("redis does not let this client write its probe key; health checks use PING, and a Redis that refuses writes is noticed only at a write of a request",
				"key", c.opts.Prefix+writeProbeKey, "reply", reply.Error())
		}
		return false, c.rdb.Ping(ctx).Err()
	}
	return true, err
}

// writesWentThrough ends a time of refused writes, once, when a write went through.
func (c *Client) writesWentThrough() {
	if !c.writesRefused.Load() {
		return
	}
	c.takenMu.Lock()
	defer c.takenMu.Unlock()
	if !c.writesRefused.Load() {
		return
	}
	// ResumedAt first: as soon as the flag is down, any answer may mark the client
	// healthy, and the cache must not trust its L1 from before in between.
	c.writesTaken()
	c.refusedAt.Store(0) // first: a refusal met once the flag is down starts a new one
	c.writesRefused.Store(false)
}

// RefusalKnownBy is when every replica on this Redis must know that it refuses writes,
// while this client counts it so: two ping intervals after this client first met the
// refusal, since every replica's pinger writes once per interval (Ping) and Redis refused
// writes from that moment at the latest. The zero time while writes go through. An
// invalidation whose writes Redis refused answers only after it (runtime/cache), so that the
// trader's next read, on any replica, skips the caches that the refused version bump left
// stale.
func (c *Client) RefusalKnownBy() time.Time {
	at := c.refusedAt.Load()
	if at == 0 || !c.writesRefused.Load() {
		return time.Time{}
	}
	return c.start.Add(time.Duration(at) + 2*c.opts.PingInterval)
}

// writeProbeKey is the key that Ping writes (with XX: it never exists); nothing reads it.
const writeProbeKey = "write-probe"

// probed records the outcome of a ping that began at started (see staleProbe).
func (c *Client) probed(started time.Time, err error) {
	if staleProbe(err, started, c.LastAnswer()) {
		return
	}
	if r := writeRefusal(err); r != nil { // MISCONF refuses PING too
		c.refuseWrites(r)
		return
	}
	c.setHealthy(err == nil, err)
}

// writeRefusal returns the reply in err by which Redis refused a write while it answers
// reads, or nil: a replica (READONLY: a failover left this client's connections on the old
// master, whose name still resolves to it), a failed RDB save with
// stop-writes-on-bgsave-error (MISCONF), too few replicas for min-replicas-to-write
// (NOREPLICAS), a full Redis with the noeviction policy (OOM; EXECABORT for a transaction
// one of whose writes it refused so). An approve's version bump does not go through then,
// nor (but for OOM) its fallback, deleting the counters, while the other replicas still read
// the old values and versions; and the invalidations' acknowledgements are writes too, so
// an approve would wait for them in vain. So the client counts as degraded (see
// refuseWrites). go-redis itself closes a connection that got READONLY (and retries once on
// a new one), so a name that now resolves to the new master is dialled again.
func writeRefusal(err error) error {
	switch e := err.(type) {
	case nil:
		return nil
	case goredis.Error:
		for _, code := range []string{"READONLY ", "MISCONF ", "NOREPLICAS ", "OOM ", "EXECABORT "} {
			if strings.HasPrefix(e.Error(), code) {
				return e
			}
		}
		return nil
	case interface{ Unwrap() []error }: // Bump's "EXECABORT ...; deleting the versions instead: READONLY ..."
		for _, e := range e.Unwrap() {
			if r := writeRefusal(e); r != nil {
				return r
			}
		}
		return nil
	}
	return writeRefusal(errors.Unwrap(err))
}

// refuseWrites marks the client degraded because Redis refused a write with reply. A trade
// approved meanwhile bumps no version and tells no replica, so no replica may answer from
// L1 or L2: each notices at its own next write (the rate limiter writes on every request,
// before the handler reads the cache) or its pinger's, within a ping interval, and the
// pinger goes on writing until a write goes through.
func (c *Client) refuseWrites(reply error) {
	if c.closing() {
		return
	}
	c.refusedAt.CompareAndSwap(0, int64(time.Since(c.start))) // the first refusal of a run
	c.writesRefused.Store(true)
	c.setHealthy(false, reply)
}

// writesTaken ends a time of refused writes like a silence (answeredAt): what a replica
// cached before it may miss a trade approved during it, whose invalidation reached no one
// and whose version bump Redis refused. So the epoch moves on and the OnResume hooks run
// (the cache flushes its L1, waits Settle and replays what it could not deliver) before the
// client counts as healthy again.
func (c *Client) writesTaken() {
	c.resume(int64(time.Since(c.start)), true)
	c.logger().Info("redis takes writes again")
}

// LastAnswer is when Redis last answered this client in time (within OpTimeout: a late
// reply does not count, see answered); the client's start when it never has
// (a replica that just started cannot know what others heard before). With the pinger
// running every PingInterval it is at most that old while Redis answers. It carries the
// monotonic clock: compare it with time.Since, not with wall-clock times.
func (c *Client) LastAnswer() time.Time {
	return c.start.Add(time.Duration(c.lastAnswer.Load()))
}

// Late says why Redis counts as slow, or "" when it does not: no reply came within OpTimeout
// for longer than Options.Silence. Healthy stays true then (the health probe waits a second,
// and one slow reply on a busy machine must not move the rate limits to each process), but
// the cache trusts neither level without timely answers, so every read goes to the
// database, and each rate-limit call (bounded by OpTimeout as well) times out and is decided
// by the replica's own buckets: /readyz says degraded, as for a Redis that is down.
func (c *Client) Late() string {
	if since := time.Since(c.LastAnswer()); since > c.opts.Silence {
		return fmt.Sprintf("slow: no reply within %s for %s", c.opts.OpTimeout, since.Round(time.Millisecond))
	}
	return ""
}

// answerHook records when Redis answered: a reply (redis.Nil and error replies included)
// within OpTimeout, rather than a network error, a timeout or a late reply.
type answerHook struct{ c *Client }

func (answerHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h answerHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		sent := time.Now()
		err := next(ctx, cmd)
		h.answered(err, sent)
		return err
	}
}

func (h answerHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		sent := time.Now()
		err := next(ctx, cmds)
		h.answered(err, sent)
		return err
	}
}

// answered records a reply to a command sent at sent: success, redis.Nil or an error
// reply. Not a caller that gave up (context.Canceled): Redis said nothing then. Nor a reply
// that took longer than OpTimeout (a ping may wait a second): the cache trusts its L1 only
// while Redis answers (LastAnswer) because an invalidation, bounded by OpTimeout, reaches
// every replica while it does. A Redis that answers everything but late lets no
// invalidation through, and when late replies counted, the pings kept every replica's
// L1 trusted, and stale after a trade on another replica, for the entries' lifetime.
func (h answerHook) answered(err error, sent time.Time) {
	var reply goredis.Error
	if err == nil || errors.Is(err, goredis.Nil) || errors.As(err, &reply) {
		if now := time.Since(h.c.start); now-sent.Sub(h.c.start) <= h.c.opts.OpTimeout {
			h.c.answeredAt(int64(now))
		}
	}
}

// answeredAt records an answer at now (nanoseconds since start). The first after a silence
// longer than Options.Silence (counted from start for the first answer: a client that
// started while Redis was down) starts a new run: ResumedAt moves and the OnResume hooks
// run. Of concurrent answers after a silence, only the one that swaps the old time out sees
// the silence.
func (c *Client) answeredAt(now int64) {
	prev := c.lastAnswer.Swap(now)
	if time.Duration(now-prev) <= c.opts.Silence {
		return
	}
	// A silence after answers (not a slow start) moves the epoch: L2 values stored before
	// it may miss a change that Redis did not take (see epochKey in store.go). A client
	// that starts while Redis is down leaves the epoch to those that saw the outage, so
	// that a replica starting slowly does not make every replica's L2 cold.
	c.resume(now, prev != 0)
}

// resume starts a new run of answers at now (nanoseconds since start): ResumedAt moves, the
// epoch too when moveEpoch, and the OnResume hooks run.
func (c *Client) resume(now int64, moveEpoch bool) {
	c.resumed.Store(now)
	if moveEpoch {
		c.silences.Add(1)
		// Moved now, not only before this client's own next L2 read: a replica that started
		// during the outage moves no epoch, and it would read the values from before the
		// outage for as long as the replicas that saw it read nothing (an idle replica, the
		// approving one's replacement in a rolling update). GetVersioned still moves it
		// first when this attempt failed.
		go func() {
			ctx, cancel := c.opCtx(context.Background())
			defer cancel()
			_ = c.moveEpoch(ctx)
		}()
	}
	c.hooksMu.Lock()
	hooks := append([]func(){}, c.resumeHooks...)
	c.hooksMu.Unlock()
	for _, fn := range hooks {
		go fn() // not on the answering command's goroutine, which a hook may wait for
	}
}

// ResumedAt is when Redis answered after the latest silence longer than Options.Silence; the
// zero time when it has answered without one since the client started.
func (c *Client) ResumedAt() time.Time {
	if v := c.resumed.Load(); v != 0 {
		return c.start.Add(time.Duration(v))
	}
	return time.Time{}
}

// OnResume registers fn to be called (on a goroutine of its own) whenever Redis answers after
// a silence longer than Options.Silence: an outage, a pause, a partition, whether or not the
// client had marked itself degraded meanwhile.
func (c *Client) OnResume(fn func()) {
	c.hooksMu.Lock()
	c.resumeHooks = append(c.resumeHooks, fn)
	c.hooksMu.Unlock()
}

// Healthy reports whether Redis answered the last operation or ping. False means degraded:
// callers use their local fallbacks.
func (c *Client) Healthy() bool { return c.healthy.Load() }

// OnHealthChange registers fn to be called (from the goroutine that observed it) on every
// transition between healthy and degraded, one transition at a time and in their order, so
// the last call says the client's state. fn must be quick and must not call back into the
// client's health (ReportError, Ping).
func (c *Client) OnHealthChange(fn func(healthy bool)) {
	c.hooksMu.Lock()
	c.hooks = append(c.hooks, fn)
	c.hooksMu.Unlock()
}

// ReportError marks the client degraded when err says that Redis could not be reached
// (a network error or a timeout). redis.Nil and script errors are answers, not outages.
//
// A connection error marks the client degraded at once. A timeout only starts a probe (a
// ping with a longer deadline, one at a time) that decides: on a busy machine one slow
// reply must not flip every replica into per-process rate limits.
func (c *Client) ReportError(err error) {
	if r := writeRefusal(err); r != nil {
		c.refuseWrites(r)
		return
	}
	if !IsUnavailable(err) {
		return
	}
	// A timeout, or no free connection in our own pool (a busy process, not a sign that
	// Redis is down), only starts a probe.
	var nerr net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, goredis.ErrPoolTimeout) || (errors.As(err, &nerr) && nerr.Timeout()) {
		if c.probing.CompareAndSwap(false, true) {
			go func() {
				defer c.probing.Store(false)
				_ = c.Ping(context.Background())
			}()
		}
		return
	}
	c.setHealthy(false, err)
}

// staleProbe reports whether a failed probe must not mark Redis down because Redis answered
// another command after the probe began: a probe whose dial was lost while Redis was stopped
// fails up to probeTimeout after Redis came back, and after a long pause such probes marked
// it down again and again behind the answers that marked it up (36 changes in 0.7 s).
//
// Only a ping without an answer can be stale: an error reply (LOADING, NOAUTH, MASTERDOWN) is
// Redis's answer, and is conclusive (the ping's own reply moves LastAnswer, too).
func staleProbe(perr error, started, lastAnswer time.Time) bool {
	return perr != nil && IsUnavailable(perr) && lastAnswer.After(started)
}

// ackPoolSize bounds the connections of concurrent invalidation waits (one each).
const ackPoolSize = 256

// probeTimeout bounds the pings that decide health: generous, unlike OpTimeout, because
// they are off the request path.
const probeTimeout = time.Second

// Unavailable is IsUnavailable, as a method (runtime/cache's Remote).
func (c *Client) Unavailable(err error) bool { return IsUnavailable(err) }

// IsUnavailable reports whether err means Redis did not answer (connection refused, closed,
// timeout, pool exhausted) as opposed to a reply such as redis.Nil.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, goredis.Nil) {
		return false
	}
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		return false // a reply from the server
	}
	// The caller gave up (client went away): says nothing about Redis.
	if errors.Is(err, context.Canceled) {
		return false
	}
	// Everything else (net.Error, io.EOF, timeouts, pool timeouts, a closed client) means
	// that no answer came.
	return true
}

// Problem says why the client is degraded: "not answering: " and the network's error (a
// refused connection, a timeout, a certificate the client does not trust) or "refused: " and
// Redis's own reply (a wrong password, NOAUTH, a server still loading its data), which a
// reader of /readyz can act on. Neither quotes a password.
func (c *Client) Problem() string {
	if p := c.problem.Load(); p != nil {
		return *p
	}
	return "not answering"
}

func (c *Client) noteProblem(err error) {
	if err == nil {
		return
	}
	var reply goredis.Error
	msg := "not answering: " + err.Error()
	if errors.As(err, &reply) {
		msg = "refused: " + strings.TrimSpace(reply.Error())
	}
	c.problem.Store(&msg)
}

func (c *Client) setHealthy(ok bool, err error) {
	if c.closing() {
		return
	}
	if !ok {
		c.noteProblem(err)
	} else if c.writesRefused.Load() {
		return // an answer, but only a write that goes through ends it (Ping)
	}
	if c.healthy.Load() == ok {
		return // no transition: the common case, without the lock
	}
	// One transition at a time, its hooks included: a request that saw a broken connection
	// marks Redis down just as the pinger marks it up, and with the hooks called outside
	// the lock the earlier transition's could run last, leaving redis_up at 0 and the rate
	// limiter per process (its gauge at 1) while Redis answered, until the next outage.
	c.transMu.Lock()
	defer c.transMu.Unlock()
	if c.healthy.Swap(ok) == ok {
		return
	}
	if ok {
		c.logger().Info("redis is answering again; shared cache and rate limits resume")
		libraryRecovered() // the next outage's first complaints show
	} else {
		c.logger().Warn("redis cannot be used; reads go to the database and rate limits are per process until it can", "problem", c.Problem())
	}
	c.hooksMu.Lock()
	hooks := append([]func(bool){}, c.hooks...)
	c.hooksMu.Unlock()
	for _, fn := range hooks {
		fn(ok)
	}
}

// pinger probes Redis periodically so that a degraded client recovers without traffic and
// a healthy one notices an outage even when idle.
func (c *Client) pinger() {
	defer c.done.Done()
	t := time.NewTicker(c.opts.PingInterval)
	defer t.Stop()
	// Cancelled by Close: a dial in flight, or its retries' backoff, ends at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			_ = c.Ping(ctx)
		}
	}
}

// opCtx bounds one operation.
func (c *Client) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.OpTimeout)
}
