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
	"fmt"
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
	dsn, drop, err := Create(context.Background(), AdminURL(), "t_")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return dsn
}

// Create makes a database named prefix plus random hex on the server of the admin DSN and
// returns its DSN and the function that drops it WITH (FORCE). The tests use it through
// NewDatabase; the tools under hack/ (demo, bench) for their throwaway databases.
func Create(ctx context.Context, admin, prefix string) (dsn string, drop func() error, err error) {
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, errors.New("DATABASE_URL must be a postgres:// URL (run through hack/services.sh)")
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, fmt.Errorf("random name: %w", err)
	}
	name := prefix + hex.EncodeToString(b[:])

	exec := func(ctx context.Context, sql string) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
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
		err := exec(ctx, "CREATE DATABASE "+name)
		if err == nil {
			break
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" && attempt < 20 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if pgErr != nil {
			return "", nil, fmt.Errorf("create database on %s: %w", u.Host, err)
		}
		return "", nil, fmt.Errorf("no PostgreSQL server answers at %s (run through hack/services.sh): %w", u.Host, err)
	}
	drop = func() error {
		if err := exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	u.Path = "/" + name
	return u.String(), drop, nil
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
