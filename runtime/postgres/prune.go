package postgres

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
)

// Every login adds a session and every refresh a refresh token; nothing else deletes them.
// SessionPruner deletes the logins that have ended, with their tokens, once deleting them
// can no longer change any answer.
//
// What a login can still do decides when it may go. A login has ended when it was revoked
// (logout, reuse of a rotated refresh token, a change of the user's roles) or when its
// current refresh token, the one not used yet, expired: its other tokens were all rotated,
// and presenting one of those only revokes the login. Ended is for good: a revoked login is
// never reinstated, and a refresh needs an unexpired current token. (A refresh that started
// just before that token expired has committed within the query timeout, far inside the
// margin below.)
//
// Deleted, an ended login answers like a revoked one that is still stored: its refresh
// tokens are unknown, 401 as they were (and a logout with one is 204 as it was); its access
// tokens find no session, which SessionActive reports as ended. The one thing an ended but
// stored login still does is end its access tokens when a rotated token of it is presented
// (reuse detection revokes it). So it is kept until none of its access tokens can be valid:
// every access token is issued with a refresh token (at login and at each refresh), so the
// last one is issued with the current refresh token and expires ACCESS_TOKEN_TTL after it,
// while the current token expires REFRESH_TOKEN_TTL after it. A login therefore goes once
// it ended more than ACCESS_TOKEN_TTL + pruneMargin ago (revoked_at, or the current token's
// expires_at): by then every access token it issued has expired too, also if the access
// lifetime was longer than the refresh one, or longer when the token was issued (up to the
// refresh lifetime plus the margin longer). A login still in use keeps every token, however
// old: its rotated tokens are what reuse detection recognizes, at any age.
//
// A login that keeps refreshing therefore keeps all its tokens for as long as it lives (one
// row per refresh); only a lifetime for logins, which the contract does not have, would
// bound that.

// SessionPruneInterval is how often serve looks for ended logins. A login can go about one
// access-token lifetime after it ended, so waiting up to 10 minutes more keeps the tables
// within a few percent of their live size at the cost of two index probes per round.
const SessionPruneInterval = 10 * time.Minute

const (
	// pruneMargin is added to the access-token lifetime: it covers clocks (expires_at and
	// exp come from the replicas' clocks, revoked_at and the comparison from the database's),
	// transactions in flight (bounded by the query timeout) and the replicas' memory of
	// ended logins (SessionCheckTTL, the access-token lifetime plus a minute). An hour more
	// of ended rows costs nothing; a margin that a skewed clock could eat would not be safe.
	pruneMargin = time.Hour

	// A batch is one transaction that deletes at most pruneBatchSessions logins and at most
	// pruneBatchTokens of their rotated tokens (a login that refreshed for a month holds
	// hundreds), so that it holds its row locks for tens of milliseconds: a request that
	// touches a row of an ended login (a late refresh, a change of roles) waits at most that.
	pruneBatchSessions = 500
	pruneBatchTokens   = 5000
	// pruneBatchPause between batches leaves the database to the requests for a moment
	// while a large backlog goes.
	pruneBatchPause = 10 * time.Millisecond
	// pruneLockTimeout bounds a batch's wait for a row lock. It is below PostgreSQL's
	// default deadlock_timeout (1 s), so in a lock cycle with a request (a change of a
	// user's roles locks the user's sessions in its own order) the batch gives up first and
	// the request goes on; the login goes in the next round.
	pruneLockTimeout = 200 * time.Millisecond
)

// PruneResult counts what one round deleted.
type PruneResult struct {
	Revoked int64 // logins deleted that had been revoked
	Expired int64 // logins deleted whose current refresh token had expired
	Tokens  int64 // refresh tokens deleted with them
	Batches int   // transactions that deleted something
}

// SessionPruner deletes ended logins and their refresh tokens (see above).
type SessionPruner struct {
	db        *DB
	accessTTL time.Duration
	log       *slog.Logger
	// Batch bounds and pause; tests make them small.
	batchSessions, batchTokens int
	pause                      time.Duration
}

// NewSessionPruner returns the pruner of the logins of db; accessTTL is ACCESS_TOKEN_TTL.
func NewSessionPruner(db *DB, accessTTL time.Duration, log *slog.Logger) *SessionPruner {
	if log == nil {
		log = slog.Default()
	}
	return &SessionPruner{db: db, accessTTL: accessTTL, log: log,
		batchSessions: pruneBatchSessions, batchTokens: pruneBatchTokens, pause: pruneBatchPause}
}

// Horizon is how long after it ended a login is deleted.
func (p *SessionPruner) Horizon() time.Duration { return p.accessTTL + pruneMargin }

// Run prunes at once, then every interval, until ctx ends. A failed round is logged and the
// next one tries again.
func (p *SessionPruner) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *SessionPruner) round(ctx context.Context) {
	start := time.Now()
	r, err := p.Prune(ctx)
	switch {
	case ctx.Err() != nil && r.Batches == 0:
		// Stopping before a batch deleted anything: the next start goes on.
	case ctx.Err() != nil:
		// Stopping after batches that committed (the one in flight finishes first): the same
		// line as a whole round's, since it is the only record of what was deleted.
		p.log.InfoContext(ctx, "pruned ended logins", "revoked_sessions", r.Revoked,
			"expired_sessions", r.Expired, "refresh_tokens", r.Tokens, "batches", r.Batches,
			"duration", time.Since(start), "horizon", p.Horizon(), "stopped", true)
	case lockTimedOut(err):
		p.log.InfoContext(ctx, "pruning ended logins gave way to a request that held one of their rows; going on next round",
			"revoked_sessions", r.Revoked, "expired_sessions", r.Expired, "refresh_tokens", r.Tokens)
	case err != nil:
		p.log.WarnContext(ctx, "pruning ended logins failed; trying again next round", "err", cause(err),
			"revoked_sessions", r.Revoked, "expired_sessions", r.Expired, "refresh_tokens", r.Tokens)
	case r.Batches > 0:
		p.log.InfoContext(ctx, "pruned ended logins", "revoked_sessions", r.Revoked,
			"expired_sessions", r.Expired, "refresh_tokens", r.Tokens, "batches", r.Batches,
			"duration", time.Since(start), "horizon", p.Horizon())
	}
}

// cause is the error under a coded one, for the log.
func cause(err error) error {
	var te *trading.Error
	if errors.As(err, &te) && te.Err != nil {
		return te.Err
	}
	return err
}

// Prune deletes, batch by batch, every login that ended more than Horizon ago, until none is
// left, ctx ends or another replica is pruning (it goes on with the same logins; deleting is
// idempotent, but two replicas would only wait for each other's row locks).
func (p *SessionPruner) Prune(ctx context.Context) (PruneResult, error) {
	var r PruneResult
	for _, k := range []pruneKind{pruneRevoked, pruneExpired} {
		for {
			if ctx.Err() != nil {
				return r, ctx.Err()
			}
			// A stop does not cancel the batch in flight, which the query timeout bounds:
			// cancelled during its COMMIT, pgx answered an error for a batch that had
			// committed, and the logins it deleted were counted and logged nowhere.
			b, err := p.batch(context.WithoutCancel(ctx), k)
			if err != nil || b.busy {
				return r, err
			}
			if b.sessions == 0 && b.tokens == 0 {
				break
			}
			r.Batches++
			r.Tokens += b.tokens
			if k == pruneRevoked {
				r.Revoked += b.sessions
			} else {
				r.Expired += b.sessions
			}
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(p.pause):
			}
		}
	}
	return r, nil
}

type pruneKind int

const (
	pruneRevoked pruneKind = iota
	pruneExpired
)

// candidates selects up to $2 ended logins that ended before now() - $1 microseconds, each
// from its partial index (migration 00006).
var candidates = map[pruneKind]string{
	pruneRevoked: `SELECT id FROM sessions
		WHERE revoked_at < now() - $1::bigint * interval '1 microsecond' LIMIT $2`,
	pruneExpired: `SELECT session_id FROM refresh_tokens
		WHERE used_at IS NULL AND expires_at < now() - $1::bigint * interval '1 microsecond' LIMIT $2`,
}

type batchResult struct {
	sessions, tokens int64
	busy             bool // another replica holds the pruning lock
}

// batch deletes, in one transaction, up to batchTokens rotated tokens of up to batchSessions
// ended logins of kind k, and those logins with their current tokens once no rotated token
// of theirs is left (the next batch finds the same logins again until then). Tokens are
// deleted before their login, the order in which a refresh locks them, so that the two
// never wait for each other in a cycle.
func (p *SessionPruner) batch(ctx context.Context, k pruneKind) (batchResult, error) {
	var r batchResult
	err := p.db.inTx(ctx, pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
		r = batchResult{}
		// One pruner at a time per schema; a transaction-level lock, so no connection is
		// held between batches. Replicas started together find it taken and skip the round.
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtext('tradingd: prune ended logins in ' || current_schema()))`).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			r.busy = true
			return nil
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, pruneLockTimeout.String()); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, candidates[k], p.Horizon().Microseconds(), p.batchSessions)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil || len(ids) == 0 {
			return err
		}
		// Rotated tokens first, bounded: addressed by ctid, so the DELETE is a TID scan of
		// exactly the rows selected.
		tag, err := tx.Exec(ctx, `
			DELETE FROM refresh_tokens WHERE ctid = ANY(ARRAY(
				SELECT ctid FROM refresh_tokens WHERE session_id = ANY($1) AND used_at IS NOT NULL LIMIT $2))`,
			ids, p.batchTokens)
		if err != nil {
			return err
		}
		r.tokens = tag.RowsAffected()
		if r.tokens == int64(p.batchTokens) {
			return nil // maybe more: the logins go in a later batch
		}
		// What is left of each login is its current token (one per login).
		if tag, err = tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE session_id = ANY($1)`, ids); err != nil {
			return err
		}
		r.tokens += tag.RowsAffected()
		if tag, err = tx.Exec(ctx, `DELETE FROM sessions WHERE id = ANY($1)`, ids); err != nil {
			return err
		}
		r.sessions = tag.RowsAffected()
		return nil
	})
	return r, err
}

// lockTimedOut reports a batch that gave up waiting for a row lock (pruneLockTimeout).
func lockTimedOut(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}
