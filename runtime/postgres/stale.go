package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Statements prepared before a schema change. pgx prepares every statement once per
// connection and keeps it. An upgrade migrates the database while the previous runtime
// serves (the operator's migration Job runs before the rollout), and when a migration changes
// the type of a column, even only its precision, PostgreSQL refuses to run the prepared
// statements that return it: "cached plan must not change result type" (SQLSTATE 0A000),
// checked before anything runs. pgx then forgets that statement on that connection only, so
// every pooled connection failed every such statement once, a 500 each time, until each had
// been prepared again (an upgrade audit: 18 on one replica over 17 s after migration 00003;
// on a quiet replica they can come up to DB_MAX_CONN_LIFETIME later).
//
// So the first such error resets the pool (the connections opened before it are closed, the
// busy ones when they are released) and the call runs once more, on a new connection: for a
// statement alone in pool's Query and QueryRow; for a transaction in inTx; for an
// approval batch in OrderService.approveTogether. Nothing had run: the statement was refused
// before executing, and its transaction, if any, was aborted.

// codeFeatureNotSupported is the SQLSTATE of a refused cached plan (among others).
const codeFeatureNotSupported = "0A000"

// staleStatement reports whether err is PostgreSQL refusing a prepared statement whose
// result types a schema change altered. The routine name identifies it whatever the
// server's language (lc_messages translates the message).
func staleStatement(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeFeatureNotSupported &&
		(pgErr.Routine == "RevalidateCachedQuery" || pgErr.Message == "cached plan must not change result type")
}

// pool is the pgx pool, whose Query and QueryRow run a statement once more, after a reset,
// when a schema change outdated its prepared form (see above). Exec needs no such care for
// the statements it runs (none returns columns, so none can be refused so).
type pool struct{ *pgxpool.Pool }

// QueryRow is pgxpool's QueryRow, run when the row is scanned, and once more after a reset
// for a stale statement.
func (p pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return retryRow{scan: func(dest ...any) error {
		err := p.Pool.QueryRow(ctx, sql, args...).Scan(dest...)
		if staleStatement(err) {
			p.Reset()
			err = p.Pool.QueryRow(ctx, sql, args...).Scan(dest...)
		}
		return err
	}}
}

type retryRow struct{ scan func(dest ...any) error }

func (r retryRow) Scan(dest ...any) error { return r.scan(dest...) }

// Query is pgxpool's Query. PostgreSQL refuses a stale statement before its first row, and
// pgx reports it when the rows are read: the rows run the query once more, after a reset,
// when the first Next finds it.
func (p pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := p.Pool.Query(ctx, sql, args...)
	if err != nil {
		return rows, err
	}
	return &retryRows{Rows: rows, again: func() (pgx.Rows, error) {
		p.Reset()
		return p.Pool.Query(ctx, sql, args...)
	}}, nil
}

// retryRows are rows that run their query once more when it turns out stale before the
// first row.
type retryRows struct {
	pgx.Rows
	// again runs the query again; nil once a row was read or the query ran again.
	again func() (pgx.Rows, error)
	err   error
}

func (r *retryRows) Next() bool {
	if r.Rows.Next() {
		r.again = nil
		return true
	}
	if r.again == nil || !staleStatement(r.Rows.Err()) {
		return false
	}
	again := r.again
	r.again = nil
	r.Rows.Close()
	rows, err := again()
	if err != nil {
		r.err = err
		return false
	}
	r.Rows = rows
	return r.Next()
}

func (r *retryRows) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.Rows.Err()
}
