package redis

import (
	"context"
	"errors"
	"fmt"
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

// versionTTL keeps a counter far longer than any value lives, so that a counter that
// expires and starts again at 0 can only meet values that expired long ago.
const versionTTL = 7 * 24 * time.Hour

// GetVersioned returns the current version under versionKey (0 when there is none) and the
// value under key when it was stored for that version; ok is false otherwise.
func (c *Client) GetVersioned(ctx context.Context, versionKey, key string) (version int64, val []byte, ok bool, err error) {
	if !c.Healthy() {
		return 0, nil, false, ErrDegraded
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	res, err := c.rdb.MGet(ctx, c.opts.Prefix+versionKey, c.opts.Prefix+key).Result()
	if err != nil {
		c.ReportError(err)
		return 0, nil, false, err
	}
	if s, isStr := res[0].(string); isStr {
		if version, err = strconv.ParseInt(s, 10, 64); err != nil {
			return 0, nil, false, fmt.Errorf("redis: version %q under %s: %w", s, versionKey, err)
		}
	}
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
// served again. It is tried even while degraded (an invalidation is worth a round trip:
// the pinger may simply not have noticed the recovery yet).
func (c *Client) Bump(ctx context.Context, versionKeys ...string) error {
	if len(versionKeys) == 0 {
		return nil
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	pipe := c.rdb.TxPipeline()
	for _, k := range versionKeys {
		pipe.Incr(ctx, c.opts.Prefix+k)
		pipe.Expire(ctx, c.opts.Prefix+k, versionTTL)
	}
	_, err := pipe.Exec(ctx)
	c.ReportError(err)
	if err == nil {
		c.setHealthy(true, nil)
	}
	return err
}
