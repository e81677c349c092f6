package http_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
)

// FuzzCreateOrder sends arbitrary bodies to POST /api/orders of a real API on a real
// database: nothing panics, nothing answers 5xx, and a 201 happens only for a body that
// decodes strictly and passes validation, with the order holding exactly what was sent.
// The seeds run in every `go test`; `go test -fuzz FuzzCreateOrder` explores further.
func FuzzCreateOrder(f *testing.F) {
	for _, s := range []string{
		`{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`,
		`{"symbol":"BTC/USD","side":"sell","quantity":0.5,"price":1e2,"client_order_id":"a.b:c-1"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"0","price":"100"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"-1","price":"100"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1000000.00000001","price":"100"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"0.000000001","price":"100"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1e999","price":"1e-999"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"NaN","price":"Infinity"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":1E+3,"price":"00012.5"}`,
		`{"symbol":"BTC/USDT","side":"buy","quantity":"1","price":"1"}`,
		`{"symbol":"BTC/USD\u0000","side":"buy","quantity":"1","price":"1"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"1","client_order_id":"ünï"}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"1","symbol":"ETH/USD"}`,
		`{"symbol":["BTC/USD"],"side":{},"quantity":[],"price":null}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"1"}{}`,
		`{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"1","x":1}`,
		`{"quantity":"99999999999999999999999999999999999999999999999999999999999999999"}`,
		`{"price":123456789012345678901234567890}`,
		`null`, `[]`, `""`, `{}`, `{`, ``, `0`, `{"quantity":-0}`, `{"quantity":"+1"}`,
	} {
		f.Add(s)
	}
	e := newEnv(f)
	e.addUser("fuzzer", trading.RoleTrader)
	tok := e.token("fuzzer")

	f.Fuzz(func(t *testing.T, body string) {
		r := e.as(t).do("POST", "/api/orders", tok, body)
		switch {
		case r.status >= 500:
			t.Fatalf("%q: %d %s", body, r.status, r.body)
		case r.status == http.StatusCreated || r.status == http.StatusOK:
			var req trading.OrderRequest
			dec := json.NewDecoder(stringsReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				t.Fatalf("%q accepted (%d) but does not decode strictly: %v", body, r.status, err)
			}
			want, err := rules.Validate(req)
			if err != nil {
				t.Fatalf("%q accepted (%d) but is invalid: %v", body, r.status, err)
			}
			var o order
			r.decode(&o)
			if r.status == http.StatusCreated && (o.Symbol != want.Symbol || o.Side != string(want.Side) || o.Status != "pending") {
				t.Fatalf("%q stored as %+v", body, o)
			}
			decEq(t, "quantity", o.Quantity, want.Quantity.String())
			decEq(t, "price", o.Price, want.Price.String())
		case r.status == http.StatusUnprocessableEntity:
			r.problem(http.StatusUnprocessableEntity)
		case r.status == http.StatusBadRequest || r.status == http.StatusConflict:
			r.problem(r.status)
		default:
			t.Fatalf("%q: unexpected %d %s", body, r.status, r.body)
		}
	})
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
