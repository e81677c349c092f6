package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// ClaimKey marks a logical database (1-15) as taken by a test or the demo; it expires, and its
// holder renews it, so that a run that died frees its database.
const ClaimKey = "trading-test-claim"

const claimTTL = 2 * time.Minute

// ClaimDatabase takes a logical database (1-15) of the Redis at base for processes that use
// no key prefix (a tradingd started by a test or by the demo: the login buckets of 127.0.0.1
// would otherwise be shared with anything else on the server). A database is free when it
// holds no claim, whatever else it holds: keys that earlier runs left (a version counter
// lives a week) are flushed in the same transaction that claims it, so they can never use
// up the 15. release empties the database and frees it.
func ClaimDatabase(ctx context.Context, base string) (redisURL string, release func(), err error) {
	opts, err := goredis.ParseURL(base)
	if err != nil {
		return "", nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	owner := hex.EncodeToString(id[:])
	n, _ := rand.Int(rand.Reader, big.NewInt(15))
	start := int(n.Int64())
	for i := range 15 {
		o := *opts
		o.DB = 1 + (start+i)%15
		c := goredis.NewClient(&o)
		err := c.Watch(ctx, func(tx *goredis.Tx) error {
			taken, err := tx.Exists(ctx, ClaimKey).Result()
			if err != nil || taken > 0 {
				return errors.Join(err, errTaken)
			}
			_, err = tx.TxPipelined(ctx, func(p goredis.Pipeliner) error {
				p.FlushDB(ctx)
				p.Set(ctx, ClaimKey, owner, claimTTL)
				return nil
			})
			return err
		}, ClaimKey)
		switch {
		case errors.Is(err, errTaken) || errors.Is(err, goredis.TxFailedErr):
			c.Close()
			continue
		case err != nil:
			c.Close()
			return "", nil, fmt.Errorf("Redis at %s: %w", o.Addr, err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // renew while in use
			defer close(done)
			t := time.NewTicker(claimTTL / 4)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					_ = c.Expire(context.Background(), ClaimKey, claimTTL).Err()
				}
			}
		}()
		u := url.URL{Scheme: "redis", Host: o.Addr, Path: fmt.Sprintf("/%d", o.DB)}
		if o.Password != "" {
			u.User = url.UserPassword(o.Username, o.Password)
		}
		return u.String(), func() {
			close(stop)
			<-done
			_ = c.FlushDB(context.Background()).Err()
			c.Close()
		}, nil
	}
	return "", nil, fmt.Errorf("Redis at %s: every database among 1-15 is claimed", opts.Addr)
}

var errTaken = errors.New("claimed")
