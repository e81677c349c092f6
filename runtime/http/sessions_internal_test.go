package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

// downSessions is a session store whose database does not answer (pure logic: the real
// store's answers are tested in runtime/postgres and through the API in auth_test.go).
type downSessions struct {
	trading.SessionService
	calls int
}

func (d *downSessions) SessionActive(context.Context, uuid.UUID) (bool, error) {
	d.calls++
	return false, trading.Unavailable("database", errors.New("connection refused"))
}

// endedSessions answers that every login has ended, unless the check's context is done.
type endedSessions struct{ trading.SessionService }

func (e *endedSessions) SessionActive(ctx context.Context, _ uuid.UUID) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, trading.Unavailable("database", err)
	}
	return false, nil
}

// A client that hangs up during a check does not make an ended login valid: the check is
// detached from the request.
func TestSessionCheckIgnoresTheCallersCancellation(t *testing.T) {
	c := newSessionCheck(&endedSessions{}, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, nil)
	sid := uuid.New()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if ok, _ := c.alive(ctx, sid); ok { // an error (the caller gone) or "ended"
		t.Fatal("an ended login is alive for a request that was cancelled")
	}
	if isAlive(t, c, context.Background(), sid) {
		t.Fatal("an ended login is alive after a cancelled check")
	}
}

// A check that was in flight when the login ended here cannot bring the login back.
func TestSessionCheckInFlightWhenTheLoginEnds(t *testing.T) {
	store := &racingSessions{release: make(chan struct{}), started: make(chan struct{})}
	c := newSessionCheck(store, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, nil)
	sid := uuid.New()
	done := make(chan bool)
	go func() { ok, _ := c.alive(context.Background(), sid); done <- ok }()
	<-store.started
	c.endedHere(context.Background(), sid) // logout on this replica while the check still runs
	close(store.release)
	if <-done {
		t.Error("the check that started before the logout let the token through after it")
	}
	if isAlive(t, c, context.Background(), sid) {
		t.Fatal("a login ended here is alive again")
	}
}

// racingSessions answers "active" (the state before the logout); its first answer waits
// for release.
type racingSessions struct {
	trading.SessionService
	release chan struct{}
	started chan struct{}
	once    sync.Once
}

func (r *racingSessions) SessionActive(context.Context, uuid.UUID) (bool, error) {
	r.once.Do(func() {
		close(r.started)
		<-r.release
	})
	return true, nil
}

// With the database down a token is let through (reads the cache serves keep working) and
// the failed check is remembered for the period, so requests do not each wait for the
// database; a login ended here stays ended.
func TestSessionCheckWithTheDatabaseDown(t *testing.T) {
	svc := &downSessions{}
	c := newSessionCheck(svc, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, nil)
	sid := uuid.New()
	for range 3 {
		if !isAlive(t, c, context.Background(), sid) {
			t.Fatal("a token refused because the database is down")
		}
	}
	if svc.calls != 1 {
		t.Fatalf("%d checks in the period, want 1", svc.calls)
	}
	ended := uuid.New()
	c.endedHere(context.Background(), ended)
	if isAlive(t, c, context.Background(), ended) {
		t.Fatal("a login ended here is alive")
	}
	if !isAlive(t, c, context.Background(), uuid.Nil) || svc.calls != 1 {
		t.Fatal("a token without a login was checked or refused")
	}
}

// isAlive is c.alive for the checks that must not fail.
func isAlive(t *testing.T, c *sessionCheck, ctx context.Context, sid uuid.UUID) bool {
	t.Helper()
	ok, err := c.alive(ctx, sid)
	if err != nil {
		t.Fatalf("session check: %v", err)
	}
	return ok
}

// brokenSessions fails as a bug would (not an unavailable database).
type brokenSessions struct {
	trading.SessionService
	calls int
}

func (b *brokenSessions) SessionActive(context.Context, uuid.UUID) (bool, error) {
	b.calls++
	return false, trading.Errorf(trading.EINTERNAL, "internal error")
}

// A check that fails for another reason than an unavailable database is an error for the
// request (500), not a login that ended (401: the client would drop a valid login), and it
// is not remembered as an answer.
func TestSessionCheckErrorIsNotAnEndedLogin(t *testing.T) {
	svc := &brokenSessions{}
	c := newSessionCheck(svc, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, nil)
	sid := uuid.New()
	for range 2 {
		ok, err := c.alive(context.Background(), sid)
		if ok || trading.ErrorCode(err) != trading.EINTERNAL {
			t.Fatalf("alive = %v, %v; want false and the internal error", ok, err)
		}
	}
	if svc.calls != 2 {
		t.Fatalf("%d checks, want 2 (a failure is not an answer to keep)", svc.calls)
	}
}

// flakyEvents fails its first publishes with err (as a Redis reply slower than the client's
// bound does, or a replica that does not acknowledge) and records every try.
type flakyEvents struct {
	mu        sync.Mutex
	failFirst int
	err       error
	tries     int
	sent      []uuid.UUID
}

func (f *flakyEvents) PublishSessionEnded(_ context.Context, sid uuid.UUID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.failFirst > 0 {
		f.failFirst--
		return f.err
	}
	f.sent = append(f.sent, sid)
	return nil
}

func (f *flakyEvents) OnSessionEnded(func(uuid.UUID)) {}

// An announcement of an ended login that gets no answer once is sent again at once, as the
// cache's invalidations are: the soak found the other replica accepting a logged-out token
// for the check period after one slow reply.
// One that went out but that a replica did not acknowledge is not sent again: that replica
// would not answer the second either, and the logout would wait twice as long.
func TestEndedLoginAnnouncedAgainAfterATimeout(t *testing.T) {
	events := &flakyEvents{failFirst: 1, err: context.DeadlineExceeded}
	c := newSessionCheck(&endedSessions{}, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, events)
	sid := uuid.New()
	c.endedHere(context.Background(), sid)
	if len(events.sent) != 1 || events.sent[0] != sid {
		t.Errorf("announced %v after one timeout, want %v once", events.sent, sid)
	}

	unacked := &flakyEvents{failFirst: 1, err: fmt.Errorf("redis: %w", trading.ErrNotAcknowledged)}
	c = newSessionCheck(&endedSessions{}, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, unacked)
	c.endedHere(context.Background(), uuid.New())
	if unacked.tries != 1 {
		t.Errorf("%d tries after a missing acknowledgement, want 1", unacked.tries)
	}
}
