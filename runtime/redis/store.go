package redis

import (
	"context"
	"errors"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// The L2 cache storage. Values are opaque bytes (runtime/cache stores JSON); keys get the
// client's prefix. Every call is bounded by OpTimeout and skipped at once while the client
// is degraded, so that an outage costs nothing per request.

// ErrDegraded is returned without a round trip while Redis is known to be down.
var ErrDegraded = errors.New("redis: degraded (not answering)")

// Get returns the value of key; ok is false when there is none.
func (c *Client) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if !c.Healthy() {
		return nil, false, ErrDegraded
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	b, err := c.rdb.Get(ctx, c.opts.Prefix+key).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, false, nil
	} else if err != nil {
		c.ReportError(err)
		return nil, false, err
	}
	return b, true, nil
}

// Set stores val under key for ttl.
func (c *Client) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if !c.Healthy() {
		return ErrDegraded
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	err := c.rdb.Set(ctx, c.opts.Prefix+key, val, ttl).Err()
	c.ReportError(err)
	return err
}

// Delete removes keys. It is tried even while degraded (an invalidation is worth a
// round trip: the pinger may simply not have noticed the recovery yet).
func (c *Client) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = c.opts.Prefix + k
	}
	err := c.rdb.Del(ctx, full...).Err()
	c.ReportError(err)
	if err == nil {
		c.setHealthy(true, nil)
	}
	return err
}

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
