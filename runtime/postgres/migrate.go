package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// SchemaReport is the line `tradingd migrate` prints and writes to its termination log for the
// schema version it left; ParseSchemaReport reads it back (the operator, from the migration
// Job's pod). One format, for the two binaries that must agree on it.
func SchemaReport(version int64) string {
	return fmt.Sprintf("database schema at version %d\n", version)
}

var schemaReportPattern = regexp.MustCompile(`database schema at version ([0-9]+)`)

// ParseSchemaReport finds a SchemaReport line in text (a termination message) and returns its
// version as written.
func ParseSchemaReport(text string) (string, bool) {
	m := schemaReportPattern.FindStringSubmatch(text)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// SchemaVersion is the migration version this binary needs; `serve` refuses an older schema.
const SchemaVersion int64 = 8

// ErrSchemaTooOld is wrapped by CheckSchema when the database is behind SchemaVersion.
var ErrSchemaTooOld = errors.New("database schema is older than this binary needs: run `tradingd migrate`")

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrate applies every pending migration and returns the schema version afterwards.
//
// It is safe to run concurrently (several replicas, init containers) and repeatedly: goose's
// Postgres session locker takes an advisory lock with pg_try_advisory_lock, polled, so a second
// migrator waits for the first and then finds nothing to do. Polling matters: a blocking
// pg_advisory_lock sits in a transaction that CREATE INDEX CONCURRENTLY would wait for.
func Migrate(ctx context.Context, url string, logger *slog.Logger) (version int64, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// The parse error may quote the DSN, password included: never pass it on.
		return 0, errors.New("postgres: DATABASE_URL is not a valid PostgreSQL connection string")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()

	// Poll the lock every second for up to 10 minutes: index builds on a big table take a while.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 600))
	if err != nil {
		return 0, fmt.Errorf("postgres: migration lock: %w", err)
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return 0, err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		return 0, fmt.Errorf("postgres: migrations: %w", err)
	}
	defer p.Close()

	results, err := p.Up(ctx)
	for _, r := range results {
		if r.Error != nil {
			continue
		}
		logger.InfoContext(ctx, "migration applied", "version", r.Source.Version,
			"file", r.Source.Path, "duration", r.Duration)
	}
	if err != nil {
		return 0, mapError(fmt.Errorf("postgres: migrate: %w", err))
	}
	version, err = p.GetDBVersion(ctx)
	if err != nil {
		return 0, mapError(fmt.Errorf("postgres: schema version: %w", err))
	}
	logger.InfoContext(ctx, "database schema is up to date", "version", version, "applied", len(results))
	return version, nil
}
