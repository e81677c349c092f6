package http

import (
	"context"
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

// sessionCheck remembers whether logins are still active, so that an access token of an
// ended login is refused although its signature and exp are fine.
type sessionCheck struct {
	svc   trading.SessionService
	log   *slog.Logger
	cache *otter.Cache[uuid.UUID, bool]
}

func newSessionCheck(svc trading.SessionService, log *slog.Logger) *sessionCheck {
	return &sessionCheck{svc: svc, log: log, cache: otter.Must(&otter.Options[uuid.UUID, bool]{
		MaximumSize:      100_000,
		ExpiryCalculator: otter.ExpiryWriting[uuid.UUID, bool](SessionCheckTTL),
	})}
}

// alive reports whether the login sid is active. A token without a login (issued before
// tokens carried one) is let through, as it was. When the database cannot answer, the token
// is let through too, and that is remembered for the period like an answer: reads that the
// cache can serve keep working while it is down, without each waiting out a query timeout.
func (c *sessionCheck) alive(ctx context.Context, sid uuid.UUID) bool {
	if sid == uuid.Nil {
		return true
	}
	if active, ok := c.cache.GetIfPresent(sid); ok {
		return active
	}
	active, err := c.svc.SessionActive(ctx, sid)
	if err != nil {
		c.log.WarnContext(ctx, "cannot check whether a login has ended; letting its access token through", "err", err)
		c.cache.Set(sid, true)
		return true
	}
	c.cache.Set(sid, active)
	return active
}

// ended records that the login sid ended here (uuid.Nil: none).
func (c *sessionCheck) ended(sid uuid.UUID) {
	if sid != uuid.Nil {
		c.cache.Set(sid, false)
	}
}
