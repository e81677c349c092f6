package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
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
		"orders_requested_by_client_order_id_key",
		"orders_pending_requested_by_idx", "orders_requested_by_keyset_idx", "orders_keyset_idx",
		"orders_status_keyset_idx",
		"trades_order_id_key", "trades_symbol_executed_idx", "trades_user_keyset_idx",
		"refresh_tokens_session_id_idx", "sessions_user_id_idx",
		"sessions_revoked_at_idx", "refresh_tokens_current_expires_at_idx",
		"orders_requested_by_symbol_keyset_idx", "trades_user_symbol_keyset_idx",
		"orders_symbol_keyset_idx", "orders_symbol_status_keyset_idx",
	}
	// Dropped by 00005: read by no statement, or served by orders_status_keyset_idx; by
	// 00008: served by orders_symbol_status_keyset_idx.
	gone := []string{
		"orders_status_idx", "orders_created_at_idx", "orders_updated_at_idx",
		"orders_pending_created_idx", "orders_pending_symbol_idx", "orders_symbol_status_idx",
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
	if def := got["orders_requested_by_symbol_keyset_idx"].def; !contains(def, "(requested_by, symbol, created_at DESC, id DESC)") {
		t.Errorf("orders_requested_by_symbol_keyset_idx = %q, want (requested_by, symbol, created_at DESC, id DESC)", def)
	}
	if def := got["orders_symbol_keyset_idx"].def; !contains(def, "(symbol, created_at DESC, id DESC)") {
		t.Errorf("orders_symbol_keyset_idx = %q, want (symbol, created_at DESC, id DESC)", def)
	}
	if def := got["orders_symbol_status_keyset_idx"].def; !contains(def, "(symbol, status, created_at DESC, id DESC)") {
		t.Errorf("orders_symbol_status_keyset_idx = %q, want (symbol, status, created_at DESC, id DESC)", def)
	}
	if def := got["trades_user_symbol_keyset_idx"].def; !contains(def, "(user_id, symbol, executed_at DESC, id DESC)") {
		t.Errorf("trades_user_symbol_keyset_idx = %q, want (user_id, symbol, executed_at DESC, id DESC)", def)
	}
	// 00007's statistics on (trader, symbol), without which the planner misses those indexes
	// for a trader and a symbol that are each a large share of the rows.
	var stats []string
	if err := db.Pool().QueryRow(context.Background(), `
		SELECT array_agg(s.stxname || ' ON ' || s.stxrelid::regclass || ' (' || (
			SELECT string_agg(a.attname, ', ' ORDER BY a.attname) FROM pg_attribute a
			WHERE a.attrelid = s.stxrelid AND a.attnum = ANY(s.stxkeys)) || ')' ORDER BY s.stxname)
		FROM pg_statistic_ext s WHERE 'm' = ANY(s.stxkind)`).Scan(&stats); err != nil {
		t.Fatal(err)
	}
	if want := []string{"orders_requested_by_symbol_stats ON orders (requested_by, symbol)",
		"trades_user_symbol_stats ON trades (symbol, user_id)"}; !slices.Equal(stats, want) {
		t.Errorf("multivariate MCV statistics %q, want %q", stats, want)
	}
}

// TestMigrateDropsInvalidLeftover simulates a CREATE INDEX CONCURRENTLY that failed halfway,
// in 00002, 00005, 00007 and 00008: the migration must replace the INVALID index instead of keeping it.
func TestMigrateDropsInvalidLeftover(t *testing.T) {
	for _, c := range []struct {
		version int
		index   string
	}{{2, "orders_keyset_idx"}, {5, "orders_status_keyset_idx"},
		{7, "orders_requested_by_symbol_keyset_idx"}, {7, "trades_user_symbol_keyset_idx"},
		{8, "orders_symbol_keyset_idx"}, {8, "orders_symbol_status_keyset_idx"}} {
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

// TestInvalidLeftoverDoesNotBlockTheRuntime: a migration run again after a concurrent build
// failed (its INVALID index left behind) must not stop the runtime's statements on the table
// while a long transaction reads it (pg_dump, a report). The leftover was dropped with a
// plain DROP INDEX, whose ACCESS EXCLUSIVE lock waits for that transaction, and every insert
// and select of the table queued behind it until the transaction ended: the order endpoints
// (00005, up and down; 00007; 00008, up and down), and with 00006 every login and every
// request's session check.
func TestInvalidLeftoverDoesNotBlockTheRuntime(t *testing.T) {
	for _, c := range []struct {
		name, index, table, probe string
		version                   int   // unrecorded for an up; 0: a down
		downTo                    int64 // the version a down goes to
	}{
		{"00005 up", "orders_status_keyset_idx", "orders",
			`INSERT INTO orders (symbol, side, quantity, price, requested_by) SELECT 'BTC/USD', 'buy', 1, 1, id FROM users`, 5, 0},
		{"00006 up", "sessions_revoked_at_idx", "sessions", `INSERT INTO sessions (user_id) SELECT id FROM users`, 6, 0},
		{"00007 up", "orders_requested_by_symbol_keyset_idx", "orders",
			`INSERT INTO orders (symbol, side, quantity, price, requested_by) SELECT 'BTC/USD', 'buy', 1, 1, id FROM users`, 7, 0},
		{"00008 up", "orders_symbol_status_keyset_idx", "orders",
			`INSERT INTO orders (symbol, side, quantity, price, requested_by) SELECT 'BTC/USD', 'buy', 1, 1, id FROM users`, 8, 0},
		{"00005 down", "orders_status_idx", "orders",
			`INSERT INTO orders (symbol, side, quantity, price, requested_by) SELECT 'BTC/USD', 'buy', 1, 1, id FROM users`, 0, 4},
		{"00008 down", "orders_symbol_status_idx", "orders",
			`INSERT INTO orders (symbol, side, quantity, price, requested_by) SELECT 'BTC/USD', 'buy', 1, 1, id FROM users`, 0, 7},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := pgtest.NewMigratedDatabase(t)
			conn := func() *pgx.Conn {
				t.Helper()
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close(context.Background()) })
				return c
			}
			admin := conn()
			exec := func(sql string) {
				t.Helper()
				if _, err := admin.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			exec(`INSERT INTO users (username, password_hash, roles) VALUES ('alice', 'x', '{trader}')`)
			// The state a failed concurrent build leaves: the index INVALID and, for an up,
			// its version unrecorded; for the down, one of 00002's indexes that it rebuilt.
			migrate := func() error { _, err := postgres.Migrate(ctx, dsn, quietLogger()); return err }
			down := c.version == 0
			if down {
				exec(`CREATE INDEX ` + c.index + ` ON orders (status)`)
				sqlDB := stdlib.OpenDB(*admin.Config())
				t.Cleanup(func() { sqlDB.Close() })
				p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
				if err != nil {
					t.Fatal(err)
				}
				migrate = func() error { _, err := p.DownTo(ctx, c.downTo); return err }
			} else {
				exec(fmt.Sprintf(`DELETE FROM goose_db_version WHERE version_id >= %d`, c.version))
			}
			exec(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = '` + c.index + `'::regclass`)

			// A long reader of the table, as pg_dump is (it holds a snapshot too).
			long := conn()
			for _, sql := range []string{`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`,
				`LOCK TABLE ` + c.table + ` IN ACCESS SHARE MODE`, `SELECT 1`} {
				if _, err := long.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			migrated := make(chan error, 1)
			go func() { migrated <- migrate() }()
			waitsFor := func(pid uint32) bool {
				t.Helper()
				var n int
				if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND $1::int = ANY(pg_blocking_pids(pid))`, int(pid)).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n > 0
			}
			// The migration gets as far as waiting for the long transaction (a concurrent
			// build or drop waits for it: that is its job).
			for !waitsFor(long.PgConn().PID()) {
				select {
				case err := <-migrated:
					t.Fatalf("migration ended (%v) without waiting for the long transaction", err)
				case <-time.After(10 * time.Millisecond):
				}
			}
			// Meanwhile the runtime's statement on the table goes through, never waiting for a lock.
			probe := conn()
			probed := make(chan error, 1)
			go func() { _, err := probe.Exec(ctx, c.probe); probed <- err }()
			var blockers []int32
			done := false
			for !done && len(blockers) == 0 {
				select {
				case err := <-probed:
					if err != nil {
						t.Fatalf("%s: %v", c.probe, err)
					}
					done = true
				case <-time.After(10 * time.Millisecond):
					if err := admin.QueryRow(ctx, `SELECT pg_blocking_pids($1)`, int(probe.PgConn().PID())).Scan(&blockers); err != nil {
						t.Fatal(err)
					}
				}
			}
			if !done {
				t.Errorf("%s waits for the migration, which waits for a long transaction: the table is closed to the runtime meanwhile", c.probe)
			}
			if _, err := long.Exec(ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
			if err := <-migrated; err != nil {
				t.Fatalf("migration: %v", err)
			}
			if !done {
				if err := <-probed; err != nil {
					t.Fatalf("%s: %v", c.probe, err)
				}
			}
			// The leftover is gone and the migration's indexes are there, valid.
			want := map[int64][]string{0: {"orders_status_keyset_idx", "sessions_revoked_at_idx", "refresh_tokens_current_expires_at_idx",
				"orders_requested_by_symbol_keyset_idx", "trades_user_symbol_keyset_idx",
				"orders_symbol_keyset_idx", "orders_symbol_status_keyset_idx"},
				4: {"orders_status_idx", "orders_created_at_idx", "orders_updated_at_idx", "orders_pending_created_idx", "orders_pending_symbol_idx"},
				7: {"orders_symbol_status_idx"}}[c.downTo]
			got := indexValidity(t, admin, `SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
				WHERE c.relnamespace = current_schema()::regnamespace
					AND (c.relname = ANY($1) OR NOT i.indisvalid OR c.relname LIKE '%\_invalid')`, want)
			wantValid := map[string]bool{}
			for _, name := range want {
				wantValid[name] = true
			}
			if !maps.Equal(got, wantValid) {
				t.Errorf("indexes after the migration %v, want %v", got, wantValid)
			}
		})
	}
}

// indexValidity runs sql, which selects (index name, indisvalid), and returns them as a map.
func indexValidity(t *testing.T, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) map[string]bool {
	t.Helper()
	rows, err := q.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	var name string
	var valid bool
	if _, err := pgx.ForEachRow(rows, []any{&name, &valid}, func() error { got[name] = valid; return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestOrderIndexesDownAndUp: the down migrations of 00008 and 00005 put back the indexes of
// orders that 00002 built (a rollback of the runtime to one that expects them), and up again
// replaces them once more.
func TestOrderIndexesDownAndUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewMigratedDatabase(t)
	db := openDB(t, dsn)
	indexes := func() map[string]bool {
		t.Helper()
		return indexValidity(t, db.Pool(), `
			SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
			WHERE i.indrelid = 'orders'::regclass`)
	}
	atLatest := indexes()
	sqlDB := stdlib.OpenDBFromPool(db.Pool())
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 7); err != nil {
		t.Fatalf("down to 7: %v", err)
	}
	atSeven := indexes()
	if valid, ok := atSeven["orders_symbol_status_idx"]; !ok || !valid {
		t.Errorf("after down to 7: orders_symbol_status_idx present %v, valid %v", ok, valid)
	}
	for _, name := range []string{"orders_symbol_keyset_idx", "orders_symbol_status_keyset_idx"} {
		if _, ok := atSeven[name]; ok {
			t.Errorf("after down to 7: %s is still there", name)
		}
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
