package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// TestServeOnAReadOnlyDatabase: a database that answers reads but refuses writes (a hot
// standby, default_transaction_read_only) leaves the pods in the Service: /readyz stays 200,
// says degraded and why, while the orders answer 503 saying so; once writes work again it is
// no longer degraded.
func TestServeOnAReadOnlyDatabase(t *testing.T) {
	dsn := pgtest.NewMigratedDatabase(t)
	r := startReplica(t, map[string]string{
		"DATABASE_URL": dsn,
		"JWT_KEYS":     jwtKeys,
		"DEMO_USERS":   "true",
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
		// The waits below submit until the answer changes; limits are tested elsewhere.
		"RATE_LIMIT_TRADING": "0", "RATE_LIMIT_GLOBAL_PER_MINUTE": "0", "RATE_LIMIT_GLOBAL_PER_DAY": "0",
	})
	tok := token(t, r.api[len("http://"):], "trader1", "password123")
	if code, body := get(t, r.admin+"/readyz"); code != 200 || !strings.Contains(body, `"database_writes":"ok"`) {
		t.Fatalf("/readyz before: %d %s", code, body)
	}

	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	u, _ := url.Parse(dsn)
	name := pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	// The setting applies to new sessions: end tradingd's (its pool reconnects).
	exec("ALTER DATABASE " + name + " SET default_transaction_read_only = on")
	exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", strings.TrimPrefix(u.Path, "/"))

	const order = `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`
	waitFor(t, func() bool {
		code, _, body := call(t, "POST", r.api+"/api/orders", tok, order)
		return code == 503 && strings.Contains(string(body), "the database refuses writes (read-only); try again later")
	}, "POST /api/orders 503 saying the database refuses writes")
	code, body := get(t, r.admin+"/readyz")
	if code != 200 || !strings.Contains(body, `"status":"degraded"`) ||
		!strings.Contains(body, `"database_writes":"degraded: the database refuses writes (read-only); reads still work"`) {
		t.Errorf("/readyz while the database refuses writes: %d %s, want 200 degraded saying why", code, body)
	}
	mustCall(t, http.StatusOK, "GET", r.api+"/api/positions", tok, "")

	exec("ALTER DATABASE " + name + " RESET default_transaction_read_only")
	waitFor(t, func() bool {
		code, _, _ := call(t, "POST", r.api+"/api/orders", tok, order)
		return code == http.StatusCreated
	}, "POST /api/orders 201 once the database takes writes")
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body = get(t, r.admin+"/readyz")
		if code == 200 && strings.Contains(body, `"status":"ready"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz 20 s after writes work again: %d %s", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
