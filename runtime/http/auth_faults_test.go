package http_test

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/jwt"
	"github.com/findmy/trading-operator/runtime/postgres"
)

// unavailableOnce fails the next FindUserByID as a database that went away does.
type unavailableOnce struct {
	trading.UserService
	fail atomic.Bool
}

func (u *unavailableOnce) FindUserByID(ctx context.Context, id uuid.UUID) (*trading.User, error) {
	if u.fail.CompareAndSwap(true, false) {
		return nil, &trading.Error{Code: trading.EUNAVAILABLE, Message: "database unavailable"}
	}
	return u.UserService.FindUserByID(ctx, id)
}

// A refresh answered with an error must not have used up the refresh token: told 503 ("try
// again shortly", Retry-After), a client retries with the same token, and that retry must
// not count as reuse and end the login. The user's read fails once here, the fault a
// database under load (no free connection, a query timeout) gives between two queries.
func TestRefreshRetryAfterUnavailableIsNotReuse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)

	keys, err := jwt.ParseKeys("k2:" + base64.StdEncoding.EncodeToString(signingSecret))
	if err != nil {
		t.Fatal(err)
	}
	users := &unavailableOnce{UserService: e.users}
	h := rthttp.NewHandler(rthttp.Config{
		Rules:  rules,
		Tokens: jwt.NewAuthority(keys, issuer, audience, time.Hour),
		Logger: slog.New(slog.DiscardHandler),
	}, rthttp.Services{
		Users:     users,
		Sessions:  postgres.NewSessionService(e.db),
		Orders:    postgres.NewOrderService(e.db, postgres.OrderServiceConfig{}),
		Portfolio: postgres.NewPortfolioService(e.db),
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	f := *e
	f.srv = srv

	pair := f.login("trader1")
	users.fail.Store(true)
	r := f.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken})
	if r.status != 200 {
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Fatalf("refresh: %s", r)
		}
		// The client does as told: the same refresh token again.
		r = f.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken})
		if r.status != 200 {
			t.Errorf("retrying a refresh that answered 503: %s (taken for reuse: the login ended)", r)
		}
	}
	users.fail.Store(false) // /me reads the user too
	f.do("GET", "/api/auth/me", pair.AccessToken, nil).want(200)
}

// A password that user creation accepts can log in. JSON carries text, not bytes: a
// password that is not UTF-8 (typed in a Latin-1 terminal, piped from random bytes into
// `tradingd user add`) reaches the login as U+FFFD and can never match, so creation must
// refuse it instead of reporting a user nobody can log in as.
func TestPasswordNotUTF8(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pw := "caf\xe9-secret" // "café" in Latin-1
	_, err := e.users.CreateUser(context.Background(), "latin1", pw, trading.RoleTrader)
	if err == nil {
		r := e.do("POST", "/api/auth/login", "", map[string]string{"username": "latin1", "password": pw})
		t.Fatalf("a password that is not UTF-8 was accepted at creation; its login: %s", r)
	}
	if trading.ErrorCode(err) != trading.EINVALID {
		t.Fatalf("creation: %v, want EINVALID", err)
	}
	if _, err := e.users.EnsureUser(context.Background(), "latin1", pw, trading.RoleTrader); trading.ErrorCode(err) != trading.EINVALID {
		t.Fatalf("ensure (bootstrap admin): %v, want EINVALID", err)
	}
}

// A deleted user's refresh token is refused (its logins go with it): 401, not a new pair.
func TestRefreshOfDeletedUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.addUser("trader1", trading.RoleTrader)
	pair := e.login("trader1")
	if _, err := e.db.Pool().Exec(context.Background(), `DELETE FROM users WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken}).problem(401)
}
