package main

import (
	"context"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// TestServePrunesEndedLogins: serve deletes the logins that ended long ago as soon as it
// serves, says how many, leaves the others, and still stops cleanly on SIGTERM.
func TestServePrunesEndedLogins(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	if r := tradingd(t, map[string]string{"DATABASE_URL": dsn}, "", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// 3 logins logged out and 4 expired a day ago (2 tokens each), 2 in use.
	if _, err := conn.Exec(ctx, `
		WITH u AS (INSERT INTO users (username, password_hash, roles) VALUES ('alice', 'x', '{trader}') RETURNING id),
		s AS (
			INSERT INTO sessions (user_id, revoked_at, created_at)
			SELECT u.id, CASE WHEN g <= 3 THEN now() - interval '1 day' END,
				CASE WHEN g <= 7 THEN now() - interval '3 days' ELSE now() END
			FROM u, generate_series(1, 9) g
			RETURNING id, created_at)
		INSERT INTO refresh_tokens (token_hash, session_id, expires_at, used_at)
		SELECT gen_random_uuid()::text::bytea, s.id,
			CASE WHEN s.created_at < now() THEN now() - interval '1 day' ELSE now() + interval '1 day' END,
			CASE WHEN r = 1 THEN now() END
		FROM s, generate_series(1, 2) r`); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, map[string]string{
		"DATABASE_URL": dsn,
		"JWT_KEYS":     jwtKeys,
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	})
	line := p.waitLog("pruned ended logins")
	if line["revoked_sessions"] != float64(3) || line["expired_sessions"] != float64(4) || line["refresh_tokens"] != float64(14) {
		t.Errorf("log line %v, want 3 revoked and 4 expired logins, 14 tokens", line)
	}
	var sessions, tokens int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM refresh_tokens)`).Scan(&sessions, &tokens); err != nil {
		t.Fatal(err)
	}
	if sessions != 2 || tokens != 4 {
		t.Errorf("%d sessions and %d tokens left, want the 2 logins in use with their 4", sessions, tokens)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	p.waitLog("database pool closed; stopped")
}
