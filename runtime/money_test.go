package trading

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func TestParseDecimal(t *testing.T) {
	for in, want := range map[string]string{
		"0.5": "0.5", "150": "150", "1e2": "100", "0.100000000": "0.1", "00012.50": "12.5",
		"-3.25": "-3.25", "+7": "7", "0.00000001": "0.00000001", "1.5E-3": "0.0015",
	} {
		d, err := ParseDecimal(in)
		if err != nil || !d.Equal(decimal.RequireFromString(want)) {
			t.Errorf("ParseDecimal(%q) = %s, %v; want %s", in, d, err, want)
		}
	}
	for _, in := range []string{
		"", " 1", "1 ", "abc", "NaN", "Inf", "-Infinity", "0x10", "1,5", "1.", ".5", "1e", "1e1000", "1e-999999",
		"0.000000001", "1.123456789", strings.Repeat("9", 65), "1/2", "--1",
	} {
		if d, err := ParseDecimal(in); err == nil {
			t.Errorf("ParseDecimal(%q) = %s, want an error", in, d)
		} else if ErrorCode(err) != EINVALID {
			t.Errorf("ParseDecimal(%q): code %s, want invalid", in, ErrorCode(err))
		}
	}
}

func TestAmountJSON(t *testing.T) {
	var v struct{ Q, P, N Amount }
	if err := json.Unmarshal([]byte(`{"Q":"0.12345678","P":150.5,"N":null}`), &v); err != nil {
		t.Fatal(err)
	}
	if !v.Q.Set || v.Q.Err != nil || v.Q.String() != "0.12345678" || !v.P.Equal(decimal.RequireFromString("150.5")) || v.N.Set {
		t.Fatalf("decoded %+v", v)
	}
	for _, bad := range []string{`{"Q":true}`, `{"Q":{}}`, `{"Q":[1]}`, `{"Q":"1e1000"}`, `{"Q":0.123456789}`} {
		var w struct{ Q Amount }
		if err := json.Unmarshal([]byte(bad), &w); err != nil {
			t.Errorf("%s: decode error %v; want the error kept in the field", bad, err)
		} else if w.Q.Err == nil {
			t.Errorf("%s: accepted as %s", bad, w.Q.Decimal)
		}
	}
	for in, want := range map[string]string{"0.5": `"0.50000000"`, "-1250.125": `"-1250.12500000"`, "0": `"0.00000000"`,
		"99999999999.99999999": `"99999999999.99999999"`} {
		b, err := json.Marshal(struct{ Q Amount }{Amount{Decimal: decimal.RequireFromString(in)}})
		if err != nil || string(b) != `{"Q":`+want+`}` {
			t.Errorf("marshal %s = %s, %v; want {\"Q\":%s}", in, b, err, want)
		}
	}
}

// FuzzParseDecimal: no input panics, an accepted value has at most Scale fractional
// digits, and a value that fits NUMERIC(20,8) survives a round trip through its text.
// (Larger values such as 1e999 parse too; OrderRules.Validate bounds them.)
func FuzzParseDecimal(f *testing.F) {
	for _, s := range []string{"0", "0.5", "1e2", "1E-8", "-3.25", "99999999999.99999999", "0.000000001", "1e999",
		"1e-999", "NaN", "", "+", "1.2.3", "0x1p3", "١", "9999999999999999999999999999999999999999999999999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDecimal(s)
		if err != nil {
			if ErrorCode(err) != EINVALID {
				t.Fatalf("ParseDecimal(%q): code %s", s, ErrorCode(err))
			}
			return
		}
		if !d.Equal(d.Truncate(Scale)) {
			t.Fatalf("ParseDecimal(%q) = %s has more than %d fractional digits", s, d, Scale)
		}
		if d.Abs().GreaterThanOrEqual(decimal.New(1, 12)) {
			return
		}
		back, err := ParseDecimal(d.String())
		if err != nil || !back.Equal(d) {
			t.Fatalf("round trip of %q: %s -> %s, %v", s, d, back, err)
		}
		var a Amount
		if err := json.Unmarshal([]byte(`"`+s+`"`), &a); err == nil && (a.Err != nil || !a.Equal(d)) {
			t.Fatalf("Amount(%q) = %s, %v; ParseDecimal gave %s", s, a.Decimal, a.Err, d)
		}
	})
}
