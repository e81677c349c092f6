package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
)

// numeric scans a NUMERIC column exactly into a decimal (never through float64).
type numeric struct{ d *decimal.Decimal }

func num(d *decimal.Decimal) *numeric { return &numeric{d: d} }

// ScanNumeric implements pgtype.NumericScanner.
func (n *numeric) ScanNumeric(v pgtype.Numeric) error {
	if !v.Valid {
		return errors.New("postgres: NULL numeric")
	}
	if v.NaN || v.InfinityModifier != pgtype.Finite {
		return errors.New("postgres: numeric is not a finite number")
	}
	*n.d = decimal.NewFromBigInt(v.Int, v.Exp)
	return nil
}

// numArg is how a decimal goes to the database: its exact text, parsed by PostgreSQL.
func numArg(d decimal.Decimal) string { return d.String() }

func amount(d decimal.Decimal) trading.Amount { return trading.Amount{Decimal: d, Set: true} }

// Page sizes of the listings (spec: limit 1..500, default 50).
const (
	defaultPageLimit = 50
	maxPageLimit     = 500
)

// pageLimit validates a listing's limit: 0 means the default.
func pageLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return defaultPageLimit, nil
	case limit < 1 || limit > maxPageLimit:
		return 0, trading.Invalid(trading.FieldError{Field: "limit", Message: "must be between 1 and 500"})
	}
	return limit, nil
}

// A cursor is the keyset position after the last row of a page: its time and id, as
// base64url("<RFC 3339 nano time>|<uuid>"). Opaque to clients; validated on the way in.
type cursor struct {
	at time.Time
	id uuid.UUID
}

func encodeCursor(at time.Time, id uuid.UUID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id.String()))
}

// decodeCursor returns nil for "" (first page) and EINVALID on field "cursor" when malformed.
func decodeCursor(s string) (*cursor, error) {
	if s == "" {
		return nil, nil
	}
	bad := trading.Invalid(trading.FieldError{Field: "cursor", Message: "is malformed"})
	if len(s) > 200 {
		return nil, bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, bad
	}
	ts, idText, ok := strings.Cut(string(raw), "|")
	if !ok {
		return nil, bad
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return nil, bad
	}
	id, err := uuid.Parse(idText)
	if err != nil {
		return nil, bad
	}
	return &cursor{at: at, id: id}, nil
}

// principal returns the caller, or EUNAUTHORIZED when the context carries none.
func principal(ctx context.Context) (trading.Principal, error) {
	p, ok := trading.PrincipalFromContext(ctx)
	if !ok || p.UserID == uuid.Nil {
		return trading.Principal{}, trading.Errorf(trading.EUNAUTHORIZED, "authentication required")
	}
	return p, nil
}

// keysetPage is one page of a newest-first listing ordered by (time, id) DESC: the validated
// limit and the position after which the page starts (nil for the first page).
type keysetPage struct {
	limit int
	after *cursor
}

// newKeysetPage validates a listing's limit and cursor (EINVALID naming the field).
func newKeysetPage(limit int, c string) (keysetPage, error) {
	n, err := pageLimit(limit)
	if err != nil {
		return keysetPage{}, err
	}
	after, err := decodeCursor(c)
	if err != nil {
		return keysetPage{}, err
	}
	return keysetPage{limit: n, after: after}, nil
}

// sql is the ORDER BY and LIMIT of the page: one row more than the limit, so that trim knows
// whether a next page exists without a count.
func (p keysetPage) sql(timeColumn string) string {
	return fmt.Sprintf(` ORDER BY %s DESC, id DESC LIMIT %d`, timeColumn, p.limit+1)
}

// trimPage drops the extra row and returns the cursor of the next page ("" at the end).
func trimPage[T any](p keysetPage, rows []T, key func(T) (time.Time, uuid.UUID)) ([]T, string) {
	if len(rows) <= p.limit {
		return rows, ""
	}
	rows = rows[:p.limit]
	return rows, encodeCursor(key(rows[p.limit-1]))
}
