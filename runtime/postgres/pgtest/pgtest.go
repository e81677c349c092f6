// Package pgtest gives each test a PostgreSQL database of its own on the server of
// DATABASE_URL, so that test packages can run in parallel against one server without sharing
// state. It fails, never skips, when no server answers: a test that silently skips proves
// nothing.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/findmy/trading-operator/runtime/postgres"
)

// DefaultURL is the admin DSN used when DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns DATABASE_URL, or DefaultURL when it is unset.
func AdminURL() string {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// NewDatabase creates a database "t_<random hex>" on the server of AdminURL and returns its
// DSN; the database is dropped WITH (FORCE) when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin := AdminURL()
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("pgtest: DATABASE_URL must be a postgres:// URL")
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("pgtest: random name: %v", err)
	}
	name := "t_" + hex.EncodeToString(b[:])

	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg, err := pgx.ParseConfig(admin)
		if err != nil {
			return err
		}
		cfg.ConnectTimeout = 5 * time.Second
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	// CREATE DATABASE copies template1 and fails with object_in_use (55006) while another
	// session is connected to it, which parallel test packages can cause for a moment.
	for attempt := 0; ; attempt++ {
		err := exec("CREATE DATABASE " + name)
		if err == nil {
			break
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" && attempt < 20 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if pgErr != nil {
			t.Fatalf("pgtest: create database: %v", err)
		}
		t.Fatalf("pgtest: no PostgreSQL server answers at DATABASE_URL (run tests through hack/services.sh): %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// NewMigratedDatabase is NewDatabase with every migration applied.
func NewMigratedDatabase(t testing.TB) string {
	t.Helper()
	dsn := NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if _, err := postgres.Migrate(ctx, dsn, logger); err != nil {
		t.Fatalf("pgtest: migrate: %v", err)
	}
	return dsn
}

// testWriter sends log lines to the test's log so that they show only for failing tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
