package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	trading "github.com/findmy/trading-operator/runtime"
)

// The one mapping from codes to statuses, and what each answer shows and logs.
func TestErrorMapping(t *testing.T) {
	var logs bytes.Buffer
	s := &Server{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	cause := errors.New("pq: relation secret_table does not exist")

	for _, tc := range []struct {
		err        error
		status     int
		detail     string
		header     string
		headerWant string
	}{
		{trading.Invalid(trading.FieldError{Field: "f", Message: "m"}), 422, "the request has invalid fields", "", ""},
		{trading.Errorf(trading.EMALFORMED, "bad json"), 400, "bad json", "", ""},
		{trading.Errorf(trading.EUNAUTHORIZED, "no token"), 401, "no token", "WWW-Authenticate", "Bearer"},
		{trading.Errorf(trading.EFORBIDDEN, "four eyes"), 403, "four eyes", "", ""},
		{trading.Errorf(trading.ENOTFOUND, "order not found"), 404, "order not found", "", ""},
		{trading.Errorf(trading.ECONFLICT, "not pending"), 409, "not pending", "", ""},
		{trading.Errorf(trading.ERATELIMIT, "slow down"), 429, "slow down", "Retry-After", "60"},
		{trading.Unavailable("database", cause), 503, "database is unavailable", "Retry-After", "1"},
		{fmt.Errorf("query: %w", context.DeadlineExceeded), 503, "a dependency is unavailable, try again shortly", "Retry-After", "1"},
		{&trading.Error{Code: trading.EINTERNAL, Message: "select * from secret_table failed", Err: cause}, 500, "internal error", "", ""},
		{cause, 500, "internal error", "", ""},
		{&trading.Error{Code: "made-up", Message: "secret_table", Err: cause}, 500, "internal error", "", ""},
	} {
		logs.Reset()
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/x", nil)
		s.Error(w, r, tc.err)
		if w.Code != tc.status {
			t.Errorf("%v: status %d, want %d", tc.err, w.Code, tc.status)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%v: Content-Type %q", tc.err, ct)
		}
		var p map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
			t.Fatalf("%v: body %s", tc.err, w.Body)
		}
		if p["status"] != float64(tc.status) || p["title"] != http.StatusText(tc.status) || p["type"] != "about:blank" {
			t.Errorf("%v: problem %v", tc.err, p)
		}
		if p["detail"] != tc.detail {
			t.Errorf("%v: detail %q, want %q", tc.err, p["detail"], tc.detail)
		}
		if _, ok := p["errors"]; ok != (tc.status == 422) {
			t.Errorf("%v: errors member %v", tc.err, p["errors"])
		}
		if tc.header != "" && w.Header().Get(tc.header) != tc.headerWant {
			t.Errorf("%v: %s = %q", tc.err, tc.header, w.Header().Get(tc.header))
		}
		if strings.Contains(w.Body.String(), "secret_table") {
			t.Errorf("%v: the cause leaked to the client: %s", tc.err, w.Body)
		}
		if tc.status == 500 && !strings.Contains(logs.String(), "secret_table") {
			t.Errorf("%v: the cause of an internal error was not logged: %s", tc.err, logs.String())
		}
	}
}

// A request whose client went away while a dependency worked on it (a timeout on the
// client's side, a closed tab) is no failure of the server: status 499 (the client closed the
// request: nginx's code, what the access log and api_requests_total then show), logged at
// debug level. It was a 503 "dependency unavailable" warning, counted with the 5xx that the
// error-rate alert watches.
func TestClientGoneIsNotAServerError(t *testing.T) {
	var logs bytes.Buffer
	s := &Server{log: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	for _, err := range []error{
		trading.Unavailable("database", fmt.Errorf("query: %w", context.Canceled)),
		fmt.Errorf("login: %w", context.Canceled),
	} {
		logs.Reset()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		w := httptest.NewRecorder()
		s.Error(w, httptest.NewRequest("GET", "/x", nil).WithContext(ctx), err)
		if w.Code != StatusClientClosedRequest {
			t.Errorf("%v with the client gone: status %d, want %d", err, w.Code, StatusClientClosedRequest)
		}
		if logs.Len() != 0 {
			t.Errorf("%v with the client gone logged at info or above: %s", err, logs.String())
		}
	}
	// The same errors while the client still waits are what they say, and so are they when
	// the server cut the request off (the end of its shutdown grace).
	w := httptest.NewRecorder()
	s.Error(w, httptest.NewRequest("GET", "/x", nil), trading.Unavailable("database", context.Canceled))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("unavailable with the client there: status %d, want 503", w.Code)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(ErrShuttingDown)
	w = httptest.NewRecorder()
	s.Error(w, httptest.NewRequest("GET", "/x", nil).WithContext(ctx), trading.Unavailable("database", context.Canceled))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("unavailable, cut off by the shutdown: status %d, want 503", w.Code)
	}
}
