package http

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

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

// With the database down a token is let through (reads the cache serves keep working) and
// the failed check is remembered for the period, so requests do not each wait for the
// database; a login ended here stays ended.
func TestSessionCheckWithTheDatabaseDown(t *testing.T) {
	svc := &downSessions{}
	c := newSessionCheck(svc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sid := uuid.New()
	for range 3 {
		if !c.alive(context.Background(), sid) {
			t.Fatal("a token refused because the database is down")
		}
	}
	if svc.calls != 1 {
		t.Fatalf("%d checks in the period, want 1", svc.calls)
	}
	ended := uuid.New()
	c.ended(ended)
	if c.alive(context.Background(), ended) {
		t.Fatal("a login ended here is alive")
	}
	if !c.alive(context.Background(), uuid.Nil) || svc.calls != 1 {
		t.Fatal("a token without a login was checked or refused")
	}
}
