package trading

import (
	"bytes"
	"encoding/json"
	"regexp"

	"github.com/shopspring/decimal"
)

// Scale is the number of fractional digits that money and quantities carry end to end:
// NUMERIC(20,8) in PostgreSQL, decimal.Decimal in Go. No float64 ever holds money.
const Scale = 8

// MaxAmount is the bound, exclusive, of a stored quantity or price: NUMERIC(20,8) holds 12
// integer digits. The configured upper bounds (MAX_QUANTITY, MAX_PRICE) must stay below it,
// so that every order validation accepts can be stored.
var MaxAmount = decimal.New(1, 20-Scale)

// decimalText bounds what we hand to the big-number parser: an exponent of a billion would
// make shopspring/decimal allocate a huge integer, so the exponent is at most 3 digits
// and the whole text at most 64 bytes.
var decimalText = regexp.MustCompile(`^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?$`)

// ParseDecimal parses an exact decimal from a string such as "0.5" or "1e2". It rejects
// floats' special values, over-long text and more than Scale significant fractional
// digits ("0.100000000" is fine: the value has one).
func ParseDecimal(s string) (decimal.Decimal, error) {
	if len(s) == 0 || len(s) > 64 || !decimalText.MatchString(s) {
		return decimal.Decimal{}, Errorf(EINVALID, "must be a decimal number")
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, Errorf(EINVALID, "must be a decimal number")
	}
	if !d.Equal(d.Truncate(Scale)) {
		return decimal.Decimal{}, Errorf(EINVALID, "must have at most %d fractional digits", Scale)
	}
	return d, nil
}

// Amount is a decimal that a request may send as a JSON string ("0.5") or a JSON number
// (0.5); both are parsed exactly, never through float64. Responses marshal as strings.
type Amount struct {
	decimal.Decimal
	// Set is true when the field was present in the request.
	Set bool
	// Err keeps a parse failure so that validation can report it per field instead of
	// failing the whole body as malformed.
	Err error
}

// UnmarshalJSON accepts a JSON string or number holding an exact decimal.
func (a *Amount) UnmarshalJSON(b []byte) error {
	a.Set = true
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		a.Set = false
		return nil
	}
	var s string
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	} else if len(b) > 0 && (b[0] == '-' || (b[0] >= '0' && b[0] <= '9')) {
		s = string(b)
	} else {
		a.Err = Errorf(EINVALID, "must be a decimal number")
		return nil
	}
	a.Decimal, a.Err = ParseDecimal(s)
	return nil
}

// MarshalJSON writes the exact decimal as a JSON string. The text is digits, a point and
// maybe a minus sign, so quoting it needs no escaping (nor a trip through encoding/json).
func (a Amount) MarshalJSON() ([]byte, error) {
	s := a.Decimal.StringFixed(Scale)
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), nil
}
