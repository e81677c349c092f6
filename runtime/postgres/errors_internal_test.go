package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	trading "github.com/findmy/trading-operator/runtime"
)

// TestRefusedWrites: a database that answers but cannot take a write (read-only, out of disk,
// out of memory, at a configured limit, failing its storage) is a dependency unavailable (503
// with what a client or an operator can act on), not an internal error (500 "internal error").
// Only the refusals that every write of a batch meets alike count as the database down.
func TestRefusedWrites(t *testing.T) {
	for _, c := range []struct {
		code, message string
		down          bool
	}{
		{"25006", "the database refuses writes (read-only); try again later", true},
		{"53100", "the database is out of disk space; try again later", true},
		{"53200", "the database is out of memory; try again shortly", false},
		{"53400", "the database reached a configured limit; try again shortly", false},
		{"58030", "the database cannot read or write its storage; try again later", false},
	} {
		pgErr := &pgconn.PgError{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: c.code, Message: "from the server"}
		err := mapError(pgErr)
		if trading.ErrorCode(err) != trading.EUNAVAILABLE || trading.ErrorMessage(err) != c.message {
			t.Errorf("%s: %s %q, want %s %q", c.code, trading.ErrorCode(err), trading.ErrorMessage(err), trading.EUNAVAILABLE, c.message)
		}
		if got := databaseDown(pgErr); got != c.down {
			t.Errorf("%s: databaseDown = %v, want %v", c.code, got, c.down)
		}
	}
}
