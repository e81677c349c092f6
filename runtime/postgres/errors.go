package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/batch"
)

// SQLSTATE codes that the services react to.
const (
	codeUniqueViolation          = "23505"
	codeForeignKeyViolation      = "23503"
	codeNumericOutOfRange        = "22003"
	codeCharacterNotInRepertoire = "22021"
	codeSerializationFailure     = "40001"
	codeDeadlockDetected         = "40P01"
	codeLockNotAvailable         = "55P03"
	codeQueryCanceled            = "57014"
	codeAdminShutdown            = "57P01"
	codeCrashShutdown            = "57P02"
	codeCannotConnectNow         = "57P03"
	codeTooManyConnections       = "53300"
	codeReadOnlyTransaction      = "25006"
	codeDiskFull                 = "53100"
	codeOutOfMemory              = "53200"
	codeConfigurationLimit       = "53400"
	codeIOError                  = "58030"
)

// mapError is the one place where database errors become coded trading errors:
//   - an error that already carries a code passes through unchanged;
//   - a database that cannot be reached, a timeout or a server going away is EUNAVAILABLE,
//     so that the API answers 503 instead of hanging or claiming a bug;
//   - a database that answers but cannot take the statement (read-only, out of disk or memory,
//     at a configured limit, failing its storage) is EUNAVAILABLE too, saying which: nothing
//     about the request is wrong, and "internal error" left client and operator guessing;
//   - a unique violation is ECONFLICT;
//   - anything else is EINTERNAL, whose message is never shown (no SQL leaks to clients);
//     the cause stays in Err for the logs.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	var te *trading.Error
	if errors.As(err, &te) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return &trading.Error{Code: trading.ENOTFOUND, Message: "not found", Err: err}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == codeLockNotAvailable {
		// The database answered: a row was held past lock_timeout (by a stuck transaction,
		// most likely). Saying "database unavailable" would send the operator to the wrong
		// place; the runbook says how to find the holder.
		return &trading.Error{Code: trading.EUNAVAILABLE, Message: errRowLocked, Err: err}
	}
	if unavailable(err) {
		return trading.Unavailable("database", err)
	}
	if errors.As(err, &pgErr) {
		if msg := cannotTake(pgErr.Code); msg != "" {
			return &trading.Error{Code: trading.EUNAVAILABLE, Message: msg, Err: err}
		}
		switch pgErr.Code {
		case codeUniqueViolation:
			return &trading.Error{Code: trading.ECONFLICT, Message: "already exists", Err: err}
		case codeNumericOutOfRange:
			// A limit configured above what NUMERIC(20,8) holds (1e12): the request is what is
			// wrong, not the server.
			return &trading.Error{Code: trading.EINVALID, Message: "a number is larger than the system can store", Err: err}
		case codeCharacterNotInRepertoire:
			// A NUL (or a byte sequence the database's encoding refuses) in a text the
			// request sent, such as a filter: what the caller sent is wrong.
			return &trading.Error{Code: trading.EINVALID, Message: "a text contains a character that cannot be stored (NUL)", Err: err}
		}
	}
	return &trading.Error{Code: trading.EINTERNAL, Message: "internal error", Err: err}
}

// errRowLocked is the message of a lock wait that gave up (503: the same call may succeed
// when retried).
const errRowLocked = "a record this request changes is locked by another transaction; try again shortly"

// cannotTake returns what a client or an operator is told when the database answered but
// could not take the statement for want of a resource, or "" for any other SQLSTATE. Reads
// usually still work then; the request may succeed later (503, not 500).
func cannotTake(code string) string {
	switch code {
	case codeReadOnlyTransaction:
		// A hot standby (the DSN leads to a replica, or to the old primary after a failover
		// whose DNS has not followed), or default_transaction_read_only set on the database or
		// role (managed services do it when storage is full, admins during maintenance).
		return "the database refuses writes (read-only); try again later"
	case codeDiskFull:
		return "the database is out of disk space; try again later"
	case codeOutOfMemory:
		return "the database is out of memory; try again shortly"
	case codeConfigurationLimit: // max_locks_per_transaction and the like: a smaller statement may pass
		return "the database reached a configured limit; try again shortly"
	case codeIOError:
		return "the database cannot read or write its storage; try again later"
	}
	return ""
}

// databaseDown reports whether err means the database as a whole cannot answer now (it
// cannot be reached, is shutting down, or did not answer in time) or refuses every write
// (read-only, out of disk), as opposed to one statement failing (a deadlock, a lock not
// granted, a constraint, out of memory or a configured limit, which a smaller statement may
// escape): the batches (package batch, which carry only writes) fail the calls queued behind
// the first only for the former, since each of them would meet the same refusal, and answer
// the latter call by call.
func databaseDown(err error) bool {
	if connectFailed(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return serverDown(pgErr.Code) || refusesWrites(pgErr.Code)
	}
	return unavailable(err)
}

// refusesWrites reports whether a SQLSTATE says the database refuses every write now (reads
// may still work): read-only, or out of disk.
func refusesWrites(code string) bool {
	return code == codeReadOnlyTransaction || code == codeDiskFull
}

// serverDown reports whether a SQLSTATE says the server cannot serve now: shutting down,
// refusing connections, or cancelling the statement at its timeout.
func serverDown(code string) bool {
	switch code {
	case codeQueryCanceled, codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow, codeTooManyConnections:
		return true
	}
	return false
}

// refusedByServer reports whether the server refused a statement: its transaction did not
// commit, so the work may be retried (the batches retry each call of a failed batch alone).
// Any other error after a COMMIT was sent leaves the outcome unknown.
func refusedByServer(err error) bool {
	var pgErr *pgconn.PgError
	// ERROR aborts the statement and its transaction; FATAL and PANIC end the session, maybe
	// after a COMMIT the client did not see.
	if !errors.As(err, &pgErr) || databaseDown(err) {
		return false
	}
	severity := pgErr.SeverityUnlocalized // the localized one may be translated
	if severity == "" {
		severity = pgErr.Severity
	}
	return severity == "ERROR"
}

// notSentError is an error that came before a statement was sent: the pool could not give a
// connection (a dial refused or timed out, the wait for a free connection timed out, the pool
// closed), or the batch ahead failed so that this call's statement was never sent. Nothing
// can have changed. pgconn.SafeToRetry does not say so for these (measured with pgx v5.13: a
// refused dial is a *pgconn.ConnectError, an acquire or dial that timed out a bare
// context.DeadlineExceeded, all with SafeToRetry false), so the code that knows marks them.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// maybeDone reports whether a failed write may have been carried out all the same: its
// statement reached the server, which did not refuse it, and the answer was lost. A
// connection that the server closed before the statement was written looks the same to the
// client (pgx reports "unexpected EOF" in both cases), so only what is known not sent, or
// refused, is ruled out.
func maybeDone(err error) bool {
	var notSent *notSentError
	return !errors.As(err, &notSent) && !errors.Is(err, batch.ErrAheadFailed) && !refusedByServer(err)
}

// unavailable reports whether err means the database could not answer in time.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || connectFailed(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		// transient by nature: the same call may succeed when retried (a lock not granted
		// within lock_timeout: another transaction holds the row)
		case codeSerializationFailure, codeDeadlockDetected, codeLockNotAvailable:
			return true
		}
		return serverDown(pgErr.Code)
	}
	if pgconn.Timeout(err) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || connectionDied(err) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	// A pool that was closed, or a connection that died mid-query.
	if errors.Is(err, pgx.ErrTxClosed) {
		return false
	}
	return pgconn.SafeToRetry(err)
}

// connectionDied reports whether the connection ended without a word from the server: the
// socket closed mid-message (unexpected EOF: PostgreSQL crashed or was stopped immediately, a
// host or proxy went away) or was already closed by such an end (pgconn's "conn closed").
func connectionDied(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, pgconn.ErrConnClosed)
}

// connectFailed reports whether err happened while opening a connection. Whatever the
// server said then (a FATAL: the database was dropped, the login revoked, its password
// changed, no connection slots left), it cannot serve this request now, and nothing about the
// request is wrong: 503, not the 500 (and, in the session check, 401 for every valid token)
// that the server's error code alone gave before. Checked before the SQLSTATE, which a
// connect-time FATAL also carries.
func connectFailed(err error) bool {
	var connectErr *pgconn.ConnectError
	return errors.As(err, &connectErr)
}

func isForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeForeignKeyViolation
}

// mapError maps err like the package-level mapError and, when the server dropped the
// connection (restart, failover, pg_terminate_backend), resets the pool: the other pooled
// connections were almost certainly dropped too, and without the reset each of them would
// fail one more request before the pool notices. So does a statement that a schema change
// outdated (stale.go) which got this far: the other connections prepared it too. A write
// refused as read-only resets it at most every readOnlyResetEvery (resetReadOnly).
func (db *DB) mapError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == codeAdminShutdown || pgErr.Code == codeCrashShutdown) ||
		!errors.As(err, &pgErr) && connectionDied(err) || staleStatement(err) {
		db.pool.Reset()
	} else if errors.As(err, &pgErr) && refusesWrites(pgErr.Code) {
		why, _, _ := strings.Cut(cannotTake(pgErr.Code), ";")
		db.refused.Store(&writesRefusal{at: time.Now(), why: why})
		if pgErr.Code == codeReadOnlyTransaction {
			db.resetReadOnly()
		}
	}
	return mapError(err)
}

// readOnlyResetEvery is how often at most a write refused as read-only resets the pool.
const readOnlyResetEvery = 2 * time.Second

// resetReadOnly resets the pool, unless a refused write did less than readOnlyResetEvery ago.
// Whether a session is read-only is fixed when it opens: a hot standby stays one (after a
// failover the old primary's address may lead to it until its connections close), and
// default_transaction_read_only takes effect for new sessions only. Without the reset the
// pool's connections would refuse writes until their lifetime ends (an hour by default) after
// the database takes writes again; reset on every refusal, they would be reopened for each
// write of the outage.
func (db *DB) resetReadOnly() {
	last := db.readOnlyResetAt.Load()
	now := time.Now().UnixNano()
	if now-last >= int64(readOnlyResetEvery) && db.readOnlyResetAt.CompareAndSwap(last, now) {
		db.pool.Reset()
	}
}
