package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestMigrateTwiceIsNoop(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	v1, err := postgres.Migrate(ctx, dsn, quietLogger())
	if err != nil {
		t.Fatalf("first migrate: %v", err)
	}
	if v1 != postgres.SchemaVersion {
		t.Fatalf("version after migrate = %d, want SchemaVersion %d", v1, postgres.SchemaVersion)
	}
	db := openDB(t, dsn)
	var rows1 int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM goose_db_version`).Scan(&rows1); err != nil {
		t.Fatal(err)
	}
	v2, err := postgres.Migrate(ctx, dsn, quietLogger())
	if err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if v2 != v1 {
		t.Fatalf("second migrate version = %d, want %d", v2, v1)
	}
	var rows2 int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM goose_db_version`).Scan(&rows2); err != nil {
		t.Fatal(err)
	}
	if rows2 != rows1 {
		t.Fatalf("second migrate wrote version rows: %d -> %d", rows1, rows2)
	}
	if v, err := db.CheckSchema(ctx); err != nil || v != postgres.SchemaVersion {
		t.Fatalf("CheckSchema = %d, %v; want %d, nil", v, err, postgres.SchemaVersion)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	const n = 2
	var wg sync.WaitGroup
	errs := make([]error, n)
	versions := make([]int64, n)
	for i := range n {
		wg.Go(func() {
			versions[i], errs[i] = postgres.Migrate(context.Background(), dsn, quietLogger())
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("migrate %d: %v", i, errs[i])
		} else if versions[i] != postgres.SchemaVersion {
			t.Errorf("migrate %d: version %d, want %d", i, versions[i], postgres.SchemaVersion)
		}
	}
}

func TestCheckSchemaUnmigrated(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	db := openDB(t, dsn)
	_, err := db.CheckSchema(context.Background())
	if !errors.Is(err, postgres.ErrSchemaTooOld) {
		t.Fatalf("CheckSchema on an empty database = %v, want ErrSchemaTooOld", err)
	}
}

func TestIndexesExistAndValid(t *testing.T) {
	dsn := pgtest.NewMigratedDatabase(t)
	db := openDB(t, dsn)
	want := []string{
		"orders_requested_by_client_order_id_key", "orders_symbol_status_idx",
		"orders_pending_symbol_idx", "orders_pending_created_idx",
		"orders_pending_requested_by_idx", "orders_status_idx", "orders_created_at_idx",
		"orders_updated_at_idx", "orders_requested_by_keyset_idx", "orders_keyset_idx",
		"trades_order_id_key", "trades_symbol_executed_idx", "trades_user_keyset_idx",
		"refresh_tokens_session_id_idx", "sessions_user_id_idx",
	}
	rows, err := db.Pool().Query(context.Background(), `
		SELECT c.relname, i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid)
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relnamespace = 'public'::regnamespace`)
	if err != nil {
		t.Fatal(err)
	}
	type idx struct {
		valid, unique bool
		def           string
	}
	got := map[string]idx{}
	for rows.Next() {
		var name string
		var x idx
		if err := rows.Scan(&name, &x.valid, &x.unique, &x.def); err != nil {
			t.Fatal(err)
		}
		got[name] = x
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		x, ok := got[name]
		switch {
		case !ok:
			t.Errorf("index %s is missing", name)
		case !x.valid:
			t.Errorf("index %s is INVALID", name)
		}
	}
	for name, x := range got {
		if !x.valid {
			t.Errorf("index %s is INVALID", name)
		}
	}
	for _, name := range []string{"orders_requested_by_client_order_id_key", "trades_order_id_key"} {
		if !got[name].unique {
			t.Errorf("index %s is not unique", name)
		}
	}
	if def := got["orders_pending_created_idx"].def; def == "" || !contains(def, "WHERE (status = 'pending'::text)") {
		t.Errorf("orders_pending_created_idx is not partial on pending: %q", def)
	}
	if def := got["orders_keyset_idx"].def; !contains(def, "created_at DESC, id DESC") {
		t.Errorf("orders_keyset_idx = %q, want (created_at DESC, id DESC)", def)
	}
}

// TestMigrateDropsInvalidLeftover simulates a CREATE INDEX CONCURRENTLY that failed halfway:
// the migration must replace the INVALID index instead of keeping it.
func TestMigrateDropsInvalidLeftover(t *testing.T) {
	dsn := pgtest.NewMigratedDatabase(t)
	db := openDB(t, dsn)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Pool().Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Version 2 unrecorded, as after its failure (the later versions never ran then).
	exec(`DELETE FROM goose_db_version WHERE version_id >= 2`)
	exec(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'orders_status_idx'::regclass`)
	if _, err := postgres.Migrate(ctx, dsn, quietLogger()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var valid bool
	if err := db.Pool().QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_status_idx'::regclass`).Scan(&valid); err != nil {
		t.Fatal(err)
	}
	if !valid {
		t.Fatal("orders_status_idx is still INVALID after migrate")
	}
}

func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, postgres.Config{URL: "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"})
	if err != nil {
		t.Fatalf("Open must not need the database: %v", err)
	}
	t.Cleanup(db.Close)
	if err := db.Ping(ctx); trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Errorf("Ping = %v, want EUNAVAILABLE", err)
	}
	if _, err := db.CheckSchema(ctx); trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Errorf("CheckSchema = %v, want EUNAVAILABLE", err)
	}
	if _, err := postgres.Migrate(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable", quietLogger()); trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Errorf("Migrate = %v, want EUNAVAILABLE", err)
	}
}
