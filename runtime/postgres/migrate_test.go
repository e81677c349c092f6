package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

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
		"orders_pending_requested_by_idx", "orders_requested_by_keyset_idx", "orders_keyset_idx",
		"orders_status_keyset_idx",
		"trades_order_id_key", "trades_symbol_executed_idx", "trades_user_keyset_idx",
		"refresh_tokens_session_id_idx", "sessions_user_id_idx",
		"sessions_revoked_at_idx", "refresh_tokens_current_expires_at_idx",
	}
	// Dropped by 00005: read by no statement, or served by orders_status_keyset_idx.
	gone := []string{
		"orders_status_idx", "orders_created_at_idx", "orders_updated_at_idx",
		"orders_pending_created_idx", "orders_pending_symbol_idx",
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
	for _, name := range gone {
		if _, ok := got[name]; ok {
			t.Errorf("index %s is still there", name)
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
	if def := got["orders_pending_requested_by_idx"].def; def == "" || !contains(def, "WHERE (status = 'pending'::text)") {
		t.Errorf("orders_pending_requested_by_idx is not partial on pending: %q", def)
	}
	if def := got["orders_status_keyset_idx"].def; !contains(def, "(status, created_at DESC, id DESC)") {
		t.Errorf("orders_status_keyset_idx = %q, want (status, created_at DESC, id DESC)", def)
	}
	if def := got["orders_keyset_idx"].def; !contains(def, "created_at DESC, id DESC") {
		t.Errorf("orders_keyset_idx = %q, want (created_at DESC, id DESC)", def)
	}
}

// TestMigrateDropsInvalidLeftover simulates a CREATE INDEX CONCURRENTLY that failed halfway,
// in 00002 and in 00005: the migration must replace the INVALID index instead of keeping it.
func TestMigrateDropsInvalidLeftover(t *testing.T) {
	for _, c := range []struct {
		version int
		index   string
	}{{2, "orders_keyset_idx"}, {5, "orders_status_keyset_idx"}} {
		t.Run(c.index, func(t *testing.T) {
			t.Parallel()
			dsn := pgtest.NewMigratedDatabase(t)
			db := openDB(t, dsn)
			ctx := context.Background()
			exec := func(sql string) {
				t.Helper()
				if _, err := db.Pool().Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			// The version unrecorded, as after its failure (the later versions never ran then).
			exec(fmt.Sprintf(`DELETE FROM goose_db_version WHERE version_id >= %d`, c.version))
			exec(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = '` + c.index + `'::regclass`)
			if _, err := postgres.Migrate(ctx, dsn, quietLogger()); err != nil {
				t.Fatalf("migrate: %v", err)
			}
			var valid bool
			if err := db.Pool().QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = '`+c.index+`'::regclass`).Scan(&valid); err != nil {
				t.Fatal(err)
			}
			if !valid {
				t.Fatalf("%s is still INVALID after migrate", c.index)
			}
		})
	}
}

// TestOrderIndexesDownAndUp: 00005's down migration puts back the indexes of orders that
// 00002 built (a rollback of the runtime to one that expects them), and up again replaces
// them once more.
func TestOrderIndexesDownAndUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	db := openDB(t, dsn)
	indexes := func() map[string]bool {
		t.Helper()
		rows, err := db.Pool().Query(ctx, `
			SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
			WHERE i.indrelid = 'orders'::regclass`)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for rows.Next() {
			var name string
			var valid bool
			if err := rows.Scan(&name, &valid); err != nil {
				t.Fatal(err)
			}
			got[name] = valid
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	atLatest := indexes()
	sqlDB := stdlib.OpenDBFromPool(db.Pool())
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 4); err != nil {
		t.Fatalf("down to 4: %v", err)
	}
	atFour := indexes()
	for _, name := range []string{"orders_status_idx", "orders_created_at_idx", "orders_updated_at_idx",
		"orders_pending_created_idx", "orders_pending_symbol_idx"} {
		if valid, ok := atFour[name]; !ok || !valid {
			t.Errorf("after down: %s present %v, valid %v", name, ok, valid)
		}
	}
	if _, ok := atFour["orders_status_keyset_idx"]; ok {
		t.Error("after down: orders_status_keyset_idx is still there")
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if again := indexes(); !maps.Equal(again, atLatest) {
		t.Errorf("indexes of orders after down and up:\n%v\nwant\n%v", again, atLatest)
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

// The server out of connection slots (here the role's CONNECTION LIMIT, SQLSTATE 53300 as
// for max_connections) while the pool holds a connection: requests that need another one get
// 503, but readiness holds (every replica meets the limit together; failing them all would
// empty the Service).
func TestReadyWhileOutOfConnectionSlots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	role := "limited_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := admin.Exec(ctx, `CREATE ROLE `+role+` LOGIN PASSWORD 'pw'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "pw")
	db, err := postgres.Open(ctx, postgres.Config{URL: u.String(), MinConns: 1, MaxConns: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Every connection of the pool busy, and the role allowed no more than those.
	var held []*pgxpool.Conn
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	holdAll := func() {
		for len(held) == 0 || db.Pool().Stat().IdleConns() > 0 {
			c, err := db.Pool().Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
	}
	holdAll()
	// The pool may still be opening its minimum in the background: limit the role to what
	// it has, let any connection in flight land, hold it too, and limit again.
	for range 2 {
		if _, err := admin.Exec(ctx, fmt.Sprintf(`ALTER ROLE %s CONNECTION LIMIT %d`, role, db.Pool().Stat().TotalConns())); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		holdAll()
	}

	if err := db.Ping(ctx); err != nil {
		t.Errorf("readiness while out of connection slots: %v, want ready", err)
	}
	_, err = postgres.NewSessionService(db).SessionActive(ctx, uuid.New())
	if trading.ErrorCode(err) != trading.EUNAVAILABLE {
		t.Errorf("a call needing another connection: %v, want unavailable", err)
	}
}

// TestWideningDoesNotQueueTheRuntime: 00003 changes the type of positions.avg_entry_price,
// which needs the table's ACCESS EXCLUSIVE lock, while the old runtime serves. A transaction
// that holds any lock on positions (a backup's pg_dump, a report) makes that ALTER wait, and
// every statement on positions queues behind the waiting ALTER: the runtime's positions,
// summaries and approvals stalled for as long as the other transaction lasted (503 after
// their timeouts). The migration must wait for the lock in short attempts that let the
// queue through, and finish once the lock is free.
func TestWideningDoesNotQueueTheRuntime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	db := openDB(t, dsn)
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Pool().Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Back to version 2, as a database that the previous release served.
	exec(`DROP TRIGGER IF EXISTS users_roles_end_logins ON users`)
	exec(`DROP FUNCTION IF EXISTS end_logins_on_role_change()`)
	exec(`ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(20,8)`)
	exec(`DELETE FROM goose_db_version WHERE version_id >= 3`)

	// A long read of positions, open while the migration runs.
	blocker, err := db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck // committed below when all goes well
	if _, err := blocker.Exec(ctx, `SELECT count(*) FROM positions`); err != nil {
		t.Fatal(err)
	}

	type result struct {
		version int64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		v, err := postgres.Migrate(ctx, dsn, quietLogger())
		done <- result{v, err}
	}()
	// Until the migration has asked for the lock at least once.
	asked := time.Now().Add(10 * time.Second)
	for {
		var waiting bool
		if err := db.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks
			WHERE relation = 'positions'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		if time.Now().After(asked) {
			t.Fatal("the migration never asked for the lock on positions")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Meanwhile the runtime's reads of positions answer (a second each at most, well under
	// the runtime's query timeout), for as long as the long transaction lasts.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		var n int
		err := db.Pool().QueryRow(rctx, `SELECT count(*) FROM positions`).Scan(&n)
		cancel()
		if err != nil {
			t.Fatalf("a read of positions while the migration waits for its lock: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("the migration ended while another transaction held positions: %d, %v", r.version, r.err)
	default:
	}
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.version != postgres.SchemaVersion {
			t.Fatalf("migrate = %d, %v; want %d", r.version, r.err, postgres.SchemaVersion)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the migration did not finish once the lock was free")
	}
	var typ string
	if err := db.Pool().QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = 'positions'::regclass AND attname = 'avg_entry_price'`).Scan(&typ); err != nil {
		t.Fatal(err)
	}
	if typ != "numeric(32,20)" {
		t.Errorf("avg_entry_price is %s, want numeric(32,20)", typ)
	}
}
