package postgres

import (
	"testing"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

func TestCursorRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 29, 1, 2, 3, 456789000, time.UTC)
	id := uuid.New()
	c, err := decodeCursor(encodeCursor(at, id))
	if err != nil || !c.at.Equal(at) || c.id != id {
		t.Fatalf("round trip = %+v, %v", c, err)
	}
	if c, err := decodeCursor(""); c != nil || err != nil {
		t.Fatalf(`decodeCursor("") = %v, %v; want the first page`, c, err)
	}
}

// FuzzDecodeCursor: no cursor a client sends makes the listing panic; anything that is not a
// cursor this package wrote is EINVALID on field "cursor".
func FuzzDecodeCursor(f *testing.F) {
	f.Add("")
	f.Add(encodeCursor(time.Unix(0, 0), uuid.Nil))
	f.Add("MjAyNi0wMS0wMVQwMDowMDowMFp8bm90LWEtdXVpZA")
	f.Add("!!!")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if trading.ErrorCode(err) != trading.EINVALID || len(trading.ErrorFields(err)) != 1 ||
				trading.ErrorFields(err)[0].Field != "cursor" {
				t.Fatalf("decodeCursor(%q) = %v, want EINVALID on cursor", s, err)
			}
			return
		}
		if s != "" && c == nil {
			t.Fatalf("decodeCursor(%q) accepted without a position", s)
		}
	})
}

func TestPageLimit(t *testing.T) {
	for _, tc := range []struct {
		in, want int
		ok       bool
	}{{0, 50, true}, {1, 1, true}, {500, 500, true}, {-1, 0, false}, {501, 0, false}} {
		got, err := pageLimit(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("pageLimit(%d) = %d, %v", tc.in, got, err)
		}
		if err != nil && trading.ErrorFields(err)[0].Field != "limit" {
			t.Errorf("pageLimit(%d) error names %v", tc.in, trading.ErrorFields(err))
		}
	}
}
