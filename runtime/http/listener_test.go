package http_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
)

// Requests net/http cannot parse are answered before any handler runs, by net/http itself in
// text/plain: on WrapListener they carry the headers of every response and a problem, like
// the rest of the API's errors (api.md, Conventions).
func TestProtocolErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1")

	srv := httptest.NewUnstartedServer(e.handler)
	srv.Listener = rthttp.WrapListener(srv.Listener)
	srv.Config.MaxHeaderBytes = 8 << 10
	srv.Start()
	t.Cleanup(srv.Close)

	send := func(t *testing.T, raw string) (*http.Response, []byte) {
		t.Helper()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		// A 431 may be answered while the request is still being written: write on the side.
		go func() { _, _ = io.WriteString(conn, raw) }()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	for _, tc := range []struct {
		name, raw string
		status    int
		detail    string
	}{
		{"header fields too large", "GET /api/orders HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20<<10) + "\r\n\r\n",
			431, "the request's header fields are too large"},
		{"no Host", "GET /api/orders HTTP/1.1\r\n\r\n", 400, "the request is not valid HTTP: missing required Host header"},
		{"malformed Host", "GET /api/orders HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "the request is not valid HTTP: malformed Host header"},
		{"invalid header name", "GET /api/orders HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400, "the request is not valid HTTP: invalid header name"},
		{"not HTTP", "GARBAGE\r\n\r\n", 400, "the request is not valid HTTP"},
		{"unknown transfer coding", "POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
			"the request uses a transfer coding this server does not support"},
		// net/http answers an Expect other than 100-continue itself (417), through the
		// response writer rather than as text/plain, with no header of ours.
		{"unknown expectation", "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", 417,
			"the request's Expect header asks for something other than 100-continue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := send(t, tc.raw)
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %q %s, want %d problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), b, tc.status)
			}
			checkSecurityHeaders(t, tc.name, resp.Header)
			var p rthttp.Problem
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatalf("body %s: %v", b, err)
			}
			if p.Status != tc.status || p.Title != http.StatusText(tc.status) || p.Type != "about:blank" || p.Detail != tc.detail {
				t.Errorf("problem %+v, want status %d, detail %q", p, tc.status, tc.detail)
			}
		})
	}

	// What handlers answer passes unchanged, their own 400 included.
	t.Run("handlers' answers unchanged", func(t *testing.T) {
		resp, b := send(t, "POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+
			"\r\nContent-Type: application/json\r\nContent-Length: 1\r\nConnection: close\r\n\r\n{")
		if resp.StatusCode != 400 || !strings.Contains(string(b), "the body ends in the middle of the JSON value") {
			t.Errorf("handler's 400: %d %s", resp.StatusCode, b)
		}
		resp, b = send(t, "GET /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+"\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"orders"`) {
			t.Errorf("list: %d %s", resp.StatusCode, b)
		}
	})
}
