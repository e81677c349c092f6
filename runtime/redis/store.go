package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// The L2 cache storage. Values are opaque bytes (runtime/cache stores JSON); keys get the
// client's prefix. Every call is bounded by OpTimeout and skipped at once while the client
// is degraded, so that an outage costs nothing per request.

// ErrDegraded is returned without a round trip while Redis is known to be down.
var ErrDegraded = errors.New("redis: degraded (not answering)")

// Stats counts the keys under prefix and their value bytes (for the cache_entries and
// cache_size_bytes gauges of level l2). It scans at most maxKeys keys so that a scrape stays
// cheap; the counts are then lower bounds.
func (c *Client) Stats(ctx context.Context, prefix string, maxKeys int) (entries, bytes int64, err error) {
	if !c.Healthy() {
		return 0, 0, ErrDegraded
	}
	ctx, cancel := context.WithTimeout(ctx, 5*c.opts.OpTimeout)
	defer cancel()
	var cursor uint64
	for {
		keys, next, err := c.rdb.Scan(ctx, cursor, c.opts.Prefix+prefix+"*", 500).Result()
		if err != nil {
			c.ReportError(err)
			return entries, bytes, err
		}
		if len(keys) > 0 {
			pipe := c.rdb.Pipeline()
			cmds := make([]*goredis.IntCmd, len(keys))
			for i, k := range keys {
				cmds[i] = pipe.StrLen(ctx, k)
			}
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
				c.ReportError(err)
				return entries, bytes, err
			}
			for _, cmd := range cmds {
				if n := cmd.Val(); n > 0 {
					entries++
					bytes += n
				}
			}
		}
		cursor = next
		if cursor == 0 || int(entries) >= maxKeys {
			return entries, bytes, nil
		}
	}
}

// Versioned values: the cache's L2 (runtime/cache) keeps, per user and view, a version
// counter that every change increments, and stores each value together with the version
// it was loaded under ("<version> <value>"). A reader takes the version and the value in
// one round trip and accepts the value only when the two match. A loader reads the version
// before it reads the database, so a value it computed before a change carries the old
// version and no reader accepts it after the change has bumped the counter, however late
// it is written. (Deleting the key on a change cannot do that: a slow loader writes the
// stale value back after the delete.)

// A counter that does not exist (never made, expired, or lost with Redis's data: FLUSHALL,
// a restart without persistence, an eviction) starts at a random number (startVersion), not
// at 0 or 1. Counting again from the start would meet the numbers it had before the loss,
// and a value carrying one of them can still arrive: a load that read the version before
// the loss writes its book after it (into the emptied Redis), and once the trader's next
// changes brought the counter back to that number, every replica served that book from
// before them. A random start meets an old number with a chance of about one in 2^61.
//
// versionTTL keeps a counter far longer than any value lives.
const versionTTL = 7 * 24 * time.Hour

// startVersion is a counter's first value: random, far from the small numbers that
// counters of earlier versions (INCR from nothing) hold, and far below overflow.
func startVersion() int64 { return 1<<40 + rand.Int64N(1<<61) }

// The epoch. A change that Redis did not take (it was out of reach) leaves the trader's
// counter where it was, and the L2 values from before it readable. The replica that made
// the change replays it when Redis answers again, but a replica can go away first (a
// rolling update, a drained node, a crash), and its replay with it: the other replicas
// then served the trader's book from before their own trade until it expired. So every
// value also carries the deployment's epoch (epochKey), which each client moves on when
// Redis answers it after a silence, before its next L2 read: no value stored before an
// outage that this client saw is served after it. (A replica that saw no silence, cut off
// while the others were not, is the partition the cache's documentation leaves open.)
// The version a caller gets is the counter and the epoch mixed into one number: a bump
// still adds 1, and another epoch gives another number.

// epochKey names the epoch of the client's L2 values.
const epochKey = "cache-epoch"

// epochMix spreads the epoch over the 64 bits (the golden ratio's odd constant), so that
// versions of two epochs do not meet for any realistic difference of counters.
const epochMix = 0x9E3779B97F4A7C15

// GetVersioned returns the current version of versionKey (its counter, mixed with the
// epoch) and the value under key when it was stored for that version; ok is false
// otherwise.
func (c *Client) GetVersioned(ctx context.Context, versionKey, key string) (version int64, val []byte, ok bool, err error) {
	if !c.Healthy() {
		return 0, nil, false, ErrDegraded
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	if err := c.moveEpoch(ctx); err != nil {
		return 0, nil, false, err
	}
	res, err := c.rdb.MGet(ctx, c.opts.Prefix+epochKey, c.opts.Prefix+versionKey, c.opts.Prefix+key).Result()
	if err != nil {
		c.ReportError(err)
		return 0, nil, false, err
	}
	s0, isStr := res[1].(string)
	e0, hasEpoch := res[0].(string)
	if !isStr || !hasEpoch {
		// No counter (or no epoch): start them (see startVersion), so that what this load
		// stores carries a number that no value from before can have. Nothing stored
		// before it is ours.
		pipe := c.rdb.TxPipeline()
		// The epoch never expires: expiring, it would make every value of the deployment
		// a miss at once, a week after the last outage.
		pipe.SetNX(ctx, c.opts.Prefix+epochKey, startVersion(), 0)
		pipe.SetNX(ctx, c.opts.Prefix+versionKey, startVersion(), versionTTL)
		get := pipe.MGet(ctx, c.opts.Prefix+epochKey, c.opts.Prefix+versionKey)
		if _, err := pipe.Exec(ctx); err != nil {
			c.ReportError(err)
			return 0, nil, false, err
		}
		e0, _ = get.Val()[0].(string)
		s0, _ = get.Val()[1].(string)
		isStr = false
	}
	counter, err := strconv.ParseInt(s0, 10, 64)
	if err != nil {
		return 0, nil, false, fmt.Errorf("redis: version %q under %s: %w", s0, versionKey, err)
	}
	epoch, err := strconv.ParseInt(e0, 10, 64)
	if err != nil {
		return 0, nil, false, fmt.Errorf("redis: epoch %q: %w", e0, err)
	}
	version = int64(uint64(counter) + uint64(epoch)*epochMix)
	if !isStr {
		return version, nil, false, nil
	}
	res = res[1:]
	s, isStr := res[1].(string)
	if !isStr {
		return version, nil, false, nil
	}
	v, payload, found := strings.Cut(s, " ")
	if !found || v != strconv.FormatInt(version, 10) {
		return version, nil, false, nil // written for another version: not ours to serve
	}
	return version, []byte(payload), true, nil
}

// moveEpoch moves the epoch on once after each silence this client saw (see epochKey).
// Until it has, no L2 value is read: an error. Concurrent callers may move it more than
// once, which costs only a colder L2.
func (c *Client) moveEpoch(ctx context.Context) error {
	n := c.silences.Load()
	if c.epochAt.Load() >= n {
		return nil
	}
	// A new random epoch, not the old one plus one: a Redis that went back to older data
	// (a crash with the last second of its AOF lost, a failover to a lagging replica) could
	// otherwise be moved on to exactly the epoch it lost, and a load that read its version
	// then would store an old book under a version that matches again.
	if err := c.rdb.Set(ctx, c.opts.Prefix+epochKey, startVersion(), 0).Err(); err != nil {
		c.ReportError(err)
		return err
	}
	for {
		at := c.epochAt.Load()
		if at >= n || c.epochAt.CompareAndSwap(at, n) {
			return nil
		}
	}
}

// SetVersioned stores val under key for version (see GetVersioned) for ttl.
func (c *Client) SetVersioned(ctx context.Context, key string, version int64, val []byte, ttl time.Duration) error {
	if !c.Healthy() {
		return ErrDegraded
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	b := make([]byte, 0, 21+len(val))
	b = strconv.AppendInt(b, version, 10)
	b = append(b, ' ')
	b = append(b, val...)
	err := c.rdb.Set(ctx, c.opts.Prefix+key, b, ttl).Err()
	c.ReportError(err)
	return err
}

// Bump increments the versions under versionKeys, so that no value stored before is
// served again, or deletes them where Redis refuses to increment them. It is tried even
// while degraded (an invalidation is worth a round trip: the pinger may simply not have
// noticed the recovery yet).
func (c *Client) Bump(ctx context.Context, versionKeys ...string) error {
	if len(versionKeys) == 0 {
		return nil
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	pipe := c.rdb.TxPipeline()
	for _, k := range versionKeys {
		pipe.SetNX(ctx, c.opts.Prefix+k, startVersion(), versionTTL) // a lost counter starts at random
		pipe.Incr(ctx, c.opts.Prefix+k)
		pipe.Expire(ctx, c.opts.Prefix+k, versionTTL)
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil && !IsUnavailable(err) && !errors.Is(err, context.Canceled) {
		// EXECABORT says only that a queued command was refused; the refusal itself
		// (OOM, READONLY) is that command's reply, and says what to fix.
		for _, cmd := range cmds {
			if cerr := cmd.Err(); cerr != nil && !strings.HasPrefix(cerr.Error(), "EXECABORT") {
				err = cerr
				break
			}
		}
		// Redis answered and refused the writes: full with noeviction (OOM, Redis's default
		// policy), a replica (READONLY), a failed save (MISCONF). Left as they were, the
		// counters would let a replica that reads L2 serve the book from before the change.
		// Deleting them is a change too, which a full Redis allows (DEL frees memory): a
		// counter that does not exist makes every value stored before a miss (see
		// startVersion). The error stays: ReportError marks the client degraded
		// (writeRefusal), as every other replica's own next write does there, so that none
		// answers from its caches meanwhile, and the invalidation waits for a replay, as
		// without Redis, instead of for acknowledgements that Redis would refuse too.
		keys := make([]string, len(versionKeys))
		for i, k := range versionKeys {
			keys[i] = c.opts.Prefix + k
		}
		if derr := c.rdb.Del(ctx, keys...).Err(); derr == nil {
			err = fmt.Errorf("%w (the versions were deleted instead)", err)
		} else {
			err = fmt.Errorf("%w; deleting the versions instead: %w", err, derr)
		}
	}
	c.ReportError(err)
	if err == nil {
		// A write went through: Redis takes writes again, even where an ACL keeps the
		// pinger from writing its probe (Ping).
		c.writesWentThrough()
		c.setHealthy(true, nil)
	}
	return err
}
