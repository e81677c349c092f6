package http

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/maypok86/otter/v2"

	trading "github.com/findmy/trading-operator/runtime"
)

// SessionCheckTTL is how long a replica trusts what it learned about a login: ending a
// login (logout, or reuse of a refresh token) ends its access tokens at once on the replica
// that handled it and within this long on the others, at the cost of one small query per
// active login and replica per period, not one per request.
const SessionCheckTTL = 5 * time.Second

// sessionCheckTimeout bounds one check, detached from the request that asked: a client
// hanging up must not turn into an answer.
const sessionCheckTimeout = 2 * time.Second

// sessionCheck remembers whether logins are still active, so that an access token of an
// ended login is refused although its signature and exp are fine.
type sessionCheck struct {
	svc    trading.SessionService
	log    *slog.Logger
	events SessionEvents // nil without Redis
	cache  *otter.Cache[uuid.UUID, bool]
	// ended holds the logins that ended on this replica, for as long as any of their access
	// tokens can live: a check that was in flight when the login ended cannot bring it back.
	ended *otter.Cache[uuid.UUID, struct{}]
}

func newSessionCheck(svc trading.SessionService, log *slog.Logger, accessTTL time.Duration, events SessionEvents) *sessionCheck {
	if accessTTL <= 0 {
		accessTTL = time.Hour
	}
	c := &sessionCheck{svc: svc, log: log, events: events,
		cache: otter.Must(&otter.Options[uuid.UUID, bool]{
			MaximumSize:      100_000,
			ExpiryCalculator: otter.ExpiryWriting[uuid.UUID, bool](SessionCheckTTL),
		}),
		ended: otter.Must(&otter.Options[uuid.UUID, struct{}]{
			MaximumSize:      100_000,
			ExpiryCalculator: otter.ExpiryWriting[uuid.UUID, struct{}](accessTTL + time.Minute),
		}),
	}
	if events != nil {
		events.OnSessionEnded(c.endedElsewhere)
	}
	return c
}

// alive reports whether the login sid is active. A token without a login (issued before
// tokens carried one) is let through, as it was. An error (not an unavailable database:
// c.load answers those) is the caller's to answer: refusing the token as if its login had
// ended would make a client drop a valid login over a fault of ours. Concurrent checks of one login make one
// query. When the database is unavailable the token is let through, and that is remembered
// for the period like an answer: reads that the cache can serve keep working while it is
// down, without each waiting out a query timeout.
func (c *sessionCheck) alive(ctx context.Context, sid uuid.UUID) (bool, error) {
	if sid == uuid.Nil {
		return true, nil
	}
	active, err := c.cache.Get(ctx, sid, otter.LoaderFunc[uuid.UUID, bool](c.load))
	if err != nil || !active {
		return false, err
	}
	// A check in flight when the login ended may have stored the answer from before.
	_, ended := c.ended.GetIfPresent(sid)
	return !ended, nil
}

func (c *sessionCheck) load(ctx context.Context, sid uuid.UUID) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionCheckTimeout)
	defer cancel()
	active, err := c.svc.SessionActive(ctx, sid)
	if trading.ErrorCode(err) == trading.EUNAVAILABLE {
		c.log.WarnContext(ctx, "cannot check whether a login has ended (database unavailable); letting its access tokens through for a while", "err", err)
		return true, nil
	}
	return active, err
}

// endedHere records that the login sid ended on this replica (uuid.Nil: none) and tells the
// other replicas, waiting for them (bounded): the logout or refused refresh answers after
// every replica refuses the login's access tokens. A failure to tell them is logged; they
// learn within SessionCheckTTL anyway.
func (c *sessionCheck) endedHere(ctx context.Context, sid uuid.UUID) {
	if sid == uuid.Nil {
		return
	}
	c.endedElsewhere(sid)
	if c.events == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionCheckTimeout)
	defer cancel()
	// One reply slower than the Redis client's bound (a busy machine) is tried once more,
	// as the cache's invalidations are: the announcement is idempotent. Not when it went out
	// and a replica did not acknowledge it (frozen, partitioned): that one would not answer a
	// second time either, and the logout would wait twice as long.
	err := c.events.PublishSessionEnded(ctx, sid)
	if err != nil && ctx.Err() == nil && !errors.Is(err, trading.ErrNotAcknowledged) {
		err = c.events.PublishSessionEnded(ctx, sid)
	}
	if err != nil {
		c.log.WarnContext(ctx, "could not tell every replica that a login ended; they refuse its access tokens within the check period", "err", err)
	}
}

// endedElsewhere records that the login sid ended (announced by another replica): the
// answer "ended" for the checks, and the ended set that outlives it.
func (c *sessionCheck) endedElsewhere(sid uuid.UUID) {
	c.ended.Set(sid, struct{}{})
	c.cache.Set(sid, false)
}
