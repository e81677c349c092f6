package postgres_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
)

func TestUsers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := context.Background()

	u, err := e.users.CreateUser(ctx, "alice", "correct horse", trading.RoleRisk)
	if err != nil {
		t.Fatal(err)
	}
	if u.Username != "alice" || len(u.Roles) != 1 || u.Roles[0] != trading.RoleRisk || u.ID == uuid.Nil {
		t.Fatalf("created user = %+v", u)
	}
	var hash string
	if err := e.db.Pool().QueryRow(ctx, `SELECT password_hash FROM users WHERE id = $1`, u.ID).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "$2a$10$") {
		t.Errorf("password hash %q is not bcrypt cost 10", hash[:7])
	}

	_, err = e.users.CreateUser(ctx, "alice", "other", trading.RoleTrader)
	wantCode(t, err, trading.ECONFLICT)

	_, err = e.users.CreateUser(ctx, "bob", strings.Repeat("x", 73), trading.RoleTrader)
	wantField(t, err, "password")
	_, err = e.users.CreateUser(ctx, "bob", "pw", trading.Role("root"))
	wantField(t, err, "role")
	_, err = e.users.CreateUser(ctx, "bad name", "pw", trading.RoleTrader)
	wantField(t, err, "username")

	got, err := e.users.Authenticate(ctx, "alice", "correct horse")
	if err != nil || got.ID != u.ID {
		t.Fatalf("authenticate with the right password = %v, %v", got, err)
	}
	_, err = e.users.Authenticate(ctx, "alice", "wrong")
	wantCode(t, err, trading.EUNAUTHORIZED)
	_, err = e.users.Authenticate(ctx, "nobody", "correct horse")
	wantCode(t, err, trading.EUNAUTHORIZED)
	if trading.ErrorMessage(err) != "invalid username or password" {
		t.Errorf("unknown user message = %q, must equal the wrong-password one", trading.ErrorMessage(err))
	}

	found, err := e.users.FindUserByID(ctx, u.ID)
	if err != nil || found.Username != "alice" {
		t.Fatalf("FindUserByID = %v, %v", found, err)
	}
	_, err = e.users.FindUserByID(ctx, uuid.New())
	wantCode(t, err, trading.ENOTFOUND)

	created, err := e.users.EnsureUser(ctx, "demo", "pw1", trading.RoleTrader)
	if err != nil || !created {
		t.Fatalf("EnsureUser new = %v, %v", created, err)
	}
	created, err = e.users.EnsureUser(ctx, "demo", "pw2", trading.RoleAdmin)
	if err != nil || created {
		t.Fatalf("EnsureUser existing = %v, %v; want false, nil", created, err)
	}
	if _, err := e.users.Authenticate(ctx, "demo", "pw1"); err != nil {
		t.Errorf("EnsureUser changed an existing user's password: %v", err)
	}
}

func TestRefreshRotationAndReuse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	h := func(s string) []byte { return []byte("hash-" + s) }

	active := func(sid uuid.UUID) bool { t.Helper(); return e.sessionActive(t, sid) }
	sid, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, h("1"), exp)
	if err != nil || sid == uuid.Nil || !active(sid) {
		t.Fatalf("create = %v, %v (active %v)", sid, err, sid != uuid.Nil && active(sid))
	}
	u, got, err := e.sessions.RotateRefreshToken(ctx, h("1"), h("2"), exp)
	if err != nil || u.ID != e.trader1.ID || u.Username != e.trader1.Username || !slices.Equal(u.Roles, e.trader1.Roles) || got != sid {
		t.Fatalf("rotate 1->2 = %+v %v, %v; want the user and login %v", u, got, err, sid)
	}
	u, _, err = e.sessions.RotateRefreshToken(ctx, h("2"), h("3"), exp)
	if err != nil || u.ID != e.trader1.ID {
		t.Fatalf("rotate 2->3 = %+v, %v", u, err)
	}
	// Reuse of the rotated token 2: refused, and the whole login is revoked (its id comes
	// back so that its access tokens can end too), so the newest token 3 stops working too.
	_, got, err = e.sessions.RotateRefreshToken(ctx, h("2"), h("x"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if got != sid || active(sid) {
		t.Fatalf("reuse returned login %v (active %v), want %v ended", got, active(sid), sid)
	}
	_, got, err = e.sessions.RotateRefreshToken(ctx, h("3"), h("4"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if got != uuid.Nil {
		t.Errorf("a token of a revoked login returned login %v: only the reuse that revokes names it", got)
	}
	if n := e.count(t, `SELECT count(*) FROM refresh_tokens WHERE token_hash = $1`, h("x")); n != 0 {
		t.Errorf("a reused token minted a new one")
	}

	// Another login of the same user is not affected.
	other, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, h("b1"), exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.sessions.RotateRefreshToken(ctx, h("b1"), h("b2"), exp); err != nil || !active(other) {
		t.Fatalf("other login: %v (active %v)", err, active(other))
	}

	// A rotated token replayed after it expired is reuse all the same: the login ends, and
	// its newest token stops working.
	late, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, h("c1"), exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.sessions.RotateRefreshToken(ctx, h("c1"), h("c2"), exp); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool().Exec(ctx, `UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1`, h("c1")); err != nil {
		t.Fatal(err)
	}
	_, got, err = e.sessions.RotateRefreshToken(ctx, h("c1"), h("cx"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if got != late || active(late) {
		t.Fatalf("late reuse returned login %v (active %v), want %v ended", got, active(late), late)
	}
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("c2"), h("c3"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	// An expired token that was never used is refused without ending its login.
	fresh, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, h("d1"), exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool().Exec(ctx, `UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1`, h("d1")); err != nil {
		t.Fatal(err)
	}
	_, got, err = e.sessions.RotateRefreshToken(ctx, h("d1"), h("d2"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if got != uuid.Nil || !active(fresh) {
		t.Fatalf("an expired, unused token returned login %v (active %v): not a reuse", got, active(fresh))
	}

	// Logout revokes and names the login; unknown tokens are fine to log out.
	if got, err := e.sessions.RevokeSession(ctx, h("b2")); err != nil || got != other || active(other) {
		t.Fatalf("revoke = %v, %v (active %v); want %v ended", got, err, active(other), other)
	}
	if got, err := e.sessions.RevokeSession(ctx, h("never-issued")); err != nil || got != uuid.Nil {
		t.Fatalf("revoke unknown = %v, %v; want nil", got, err)
	}
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("b2"), h("b3"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if active(uuid.New()) {
		t.Error("an unknown login is active")
	}

	// Unknown and expired tokens.
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("unknown"), h("u2"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if _, err := e.sessions.CreateSession(ctx, e.trader2.ID, e.trader2.Roles, h("old"), time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("old"), h("old2"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
}

// A change of a user's roles ends the user's logins (their tokens carry the old roles): by
// hand in SQL too. Setting the same roles again ends nothing.
func TestRoleChangeEndsLogins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	risk, err := e.sessions.CreateSession(ctx, e.risk1.ID, e.risk1.Roles, []byte("risk-login"), exp)
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, []byte("trader-login"), exp)
	if err != nil {
		t.Fatal(err)
	}
	active := func(sid uuid.UUID) bool { t.Helper(); return e.sessionActive(t, sid) }
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := e.db.Pool().Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE users SET roles = roles WHERE id = $1`, e.risk1.ID)
	if !active(risk) {
		t.Fatal("setting the same roles ended the login")
	}
	exec(`UPDATE users SET roles = '{trader}' WHERE id = $1`, e.risk1.ID)
	if active(risk) {
		t.Error("the demoted user's login is still active: its token keeps the risk role")
	}
	if !active(other) {
		t.Error("another user's login ended")
	}
	if _, _, err := e.sessions.RotateRefreshToken(ctx, []byte("risk-login"), []byte("risk-next"), exp); trading.ErrorCode(err) != trading.EUNAUTHORIZED {
		t.Errorf("refresh of the ended login: %v, want unauthorized", err)
	}
	// A login whose password was checked before the change (its tokens would carry the old
	// roles) is not started after it.
	if _, err := e.sessions.CreateSession(ctx, e.risk1.ID, e.risk1.Roles, []byte("late-login"), exp); trading.ErrorCode(err) != trading.ECONFLICT {
		t.Errorf("a login with the roles from before the change: %v, want conflict", err)
	}
	if _, err := e.sessions.CreateSession(ctx, e.risk1.ID, []trading.Role{trading.RoleTrader}, []byte("new-login"), exp); err != nil {
		t.Errorf("a login with the new roles: %v", err)
	}
	// By hand, from a session whose search_path does not name the schema: the trigger still
	// finds the sessions.
	conn, err := e.db.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SET search_path TO pg_catalog`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `RESET search_path`) //nolint:errcheck
	if _, err := conn.Exec(ctx, `UPDATE `+pgx.Identifier{schema, "users"}.Sanitize()+` SET roles = '{risk}' WHERE id = $1`, e.trader1.ID); err != nil {
		t.Fatalf("a change of roles from another search_path: %v", err)
	}
	if active(other) {
		t.Error("a change of roles from another search_path left the login active")
	}
}

// sessionActive reports whether the login sid is active, failing the test on an error.
func (e *env) sessionActive(t *testing.T, sid uuid.UUID) bool {
	t.Helper()
	ok, err := e.sessions.SessionActive(context.Background(), sid)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}
