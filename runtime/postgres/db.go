// Package postgres implements the services of package trading on PostgreSQL with pgx:
// users, refresh-token sessions, the four-eyes order workflow, trades and positions.
//
// Every call is bounded by Config.QueryTimeout, and every database error goes through
// mapError, so a dead database answers EUNAVAILABLE quickly and no SQL reaches a client.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	pgxuuid "github.com/vgarvardt/pgx-google-uuid/v5"

	trading "github.com/findmy/trading-operator/runtime"
)

// Pool defaults, as in the spec (DB_MAX_CONNS and friends).
const (
	DefaultMaxConns          int32 = 30
	DefaultMinConns          int32 = 2
	DefaultMaxConnLifetime         = time.Hour
	DefaultHealthCheckPeriod       = 30 * time.Second
	DefaultQueryTimeout            = 5 * time.Second

	defaultConnectTimeout = 5 * time.Second
)

// Config configures the connection pool. Zero values take the defaults above.
type Config struct {
	URL               string
	MaxConns          int32
	MinConns          int32
	MaxConnLifetime   time.Duration
	HealthCheckPeriod time.Duration
	// QueryTimeout bounds every service call (default 5s), so that a dead or stuck database
	// gives EUNAVAILABLE quickly instead of holding requests.
	QueryTimeout time.Duration
	// Tracer, when set, sees every query (metrics).
	Tracer pgx.QueryTracer
}

// DB is the connection pool shared by the services.
type DB struct {
	pool    pool
	timeout time.Duration
	// now is the clock of the "today" boundaries (daily P&L, trades today); tests keep it.
	now func() time.Time
	// readOnlyResetAt is when a write refused as read-only last reset the pool (UnixNano).
	readOnlyResetAt atomic.Int64
	// refused is the last refusal of every write (read-only, out of disk), for WritesRefused.
	refused atomic.Pointer[writesRefusal]
}

type writesRefusal struct {
	at  time.Time
	why string
}

// WritesRefusedFor is how long WritesRefused reports a refusal after it happened.
const WritesRefusedFor = 10 * time.Second

// WritesRefused returns why the database refused a write as it would refuse every write
// (read-only, out of disk) less than WritesRefusedFor ago, or "" ("the database refuses
// writes (read-only)"). /readyz shows it as degraded, not as unavailable: reads still work,
// and failing readiness would take every replica out of the Service at once. The database is
// only known to refuse writes when one is tried, so this clears after WritesRefusedFor
// without one, which with write traffic is about when writes work again.
func (db *DB) WritesRefused() string {
	r := db.refused.Load()
	if r == nil || time.Since(r.at) >= WritesRefusedFor {
		return ""
	}
	return r.why
}

// Open builds the pool. It does not wait for the database: the pool connects lazily, so a
// process can start (and report not ready) while the database is down.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// The parse error may quote the DSN, password included: never pass it on.
		return nil, trading.Errorf(trading.EINVALID, "DATABASE_URL is not a valid PostgreSQL connection string")
	}
	pc.MaxConns = orDefault(cfg.MaxConns, DefaultMaxConns)
	pc.MinConns = orDefault(cfg.MinConns, DefaultMinConns)
	if pc.MinConns > pc.MaxConns {
		pc.MinConns = pc.MaxConns
	}
	pc.MaxConnLifetime = orDefault(cfg.MaxConnLifetime, DefaultMaxConnLifetime)
	pc.HealthCheckPeriod = orDefault(cfg.HealthCheckPeriod, DefaultHealthCheckPeriod)
	timeout := orDefault(cfg.QueryTimeout, DefaultQueryTimeout)
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > timeout {
		pc.ConnConfig.ConnectTimeout = timeout
	}
	if cfg.Tracer != nil {
		pc.ConnConfig.Tracer = cfg.Tracer
	}
	// google/uuid's UUID implements driver.Valuer and sql.Scanner, so pgx would pass every id
	// as a string (formatted, then parsed back) and read every id as text: a few percent of
	// tradingd's CPU per order. Registered, ids travel as their 16 bytes.
	pc.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		pgxuuid.Register(conn.TypeMap())
		return nil
	}
	p, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: pool: %w", err)
	}
	return &DB{pool: pool{p}, timeout: timeout, now: time.Now}, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Pool returns the pgx pool (for metrics of its stats).
func (db *DB) Pool() *pgxpool.Pool { return db.pool.Pool }

// Close closes every connection of the pool.
func (db *DB) Close() { db.pool.Close() }

// Ping checks that the database answers (GET /readyz); EUNAVAILABLE otherwise. A server that
// refuses one more connection for want of slots (SQLSTATE 53300: max_connections or the
// role's limit reached) while this pool holds connections is answering: ready. The requests
// that need a new connection meanwhile get their 503; failing readiness as well would take
// every replica out of the Service at once, since they all meet the same limit together.
func (db *DB) Ping(ctx context.Context) error {
	ctx, cancel := db.bound(ctx)
	defer cancel()
	err := db.pool.Ping(ctx)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == codeTooManyConnections && db.pool.Stat().TotalConns() > 0 {
		return nil
	}
	return db.mapError(err)
}

// CheckSchema returns the applied schema version, and an error wrapping ErrSchemaTooOld when it
// is older than SchemaVersion (`serve` refuses to start then).
func (db *DB) CheckSchema(ctx context.Context) (int64, error) {
	ctx, cancel := db.bound(ctx)
	defer cancel()
	var version int64
	err := db.pool.QueryRow(ctx,
		`SELECT COALESCE(MAX(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&version)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: never migrated
		version, err = 0, nil
	}
	if err != nil {
		return 0, db.mapError(err)
	}
	if version < SchemaVersion {
		return version, fmt.Errorf("%w (database has version %d, this binary needs %d)",
			ErrSchemaTooOld, version, SchemaVersion)
	}
	return version, nil
}

// bound gives a call its QueryTimeout.
func (db *DB) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, db.timeout)
}

// inTx runs fn in a transaction bounded by the query timeout (fn gets the bounded context),
// committing when fn returns nil. A transaction refused for a statement that a schema change
// outdated (see stale.go) runs once more, after a reset of the pool: fn may run twice, and
// must set everything it reports each time.
func (db *DB) inTx(ctx context.Context, opts pgx.TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx, cancel := db.bound(ctx)
	defer cancel()
	err := db.tx(ctx, opts, fn)
	if staleStatement(err) {
		db.pool.Reset()
		err = db.tx(ctx, opts, fn)
	}
	return db.mapError(err)
}

// tx runs fn in a transaction, committing when fn returns nil.
func (db *DB) tx(ctx context.Context, opts pgx.TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) error {
	tx, err := db.pool.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it is a no-op
	if err := fn(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
