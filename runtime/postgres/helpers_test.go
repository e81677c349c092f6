package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/findmy/trading-operator/runtime/postgres"
)

func openDB(t *testing.T, dsn string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), postgres.Config{URL: dsn, MinConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
