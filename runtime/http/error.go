package http

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	trading "github.com/findmy/trading-operator/runtime"
)

// codeStatus is the one mapping from trading error codes to HTTP statuses.
var codeStatus = map[string]int{
	trading.EINVALID:      http.StatusUnprocessableEntity,
	trading.EMALFORMED:    http.StatusBadRequest,
	trading.EUNAUTHORIZED: http.StatusUnauthorized,
	trading.EFORBIDDEN:    http.StatusForbidden,
	trading.ENOTFOUND:     http.StatusNotFound,
	trading.ECONFLICT:     http.StatusConflict,
	trading.ERATELIMIT:    http.StatusTooManyRequests,
	trading.EUNAVAILABLE:  http.StatusServiceUnavailable,
	trading.EINTERNAL:     http.StatusInternalServerError,
}

// ErrorStatus returns the HTTP status for err.
func ErrorStatus(err error) int {
	if status, ok := codeStatus[errorCode(err)]; ok {
		return status
	}
	return http.StatusInternalServerError
}

// errorCode is trading.ErrorCode, except that a deadline which is not already a coded
// error means a dependency did not answer in time: 503, not a bug.
func errorCode(err error) string {
	var te *trading.Error
	if !errors.As(err, &te) && errors.Is(err, context.DeadlineExceeded) {
		return trading.EUNAVAILABLE
	}
	return trading.ErrorCode(err)
}

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type   string               `json:"type"`
	Title  string               `json:"title"`
	Status int                  `json:"status"`
	Detail string               `json:"detail"`
	Errors []trading.FieldError `json:"errors,omitempty"`
}

// StatusClientClosedRequest is the status of a request whose client went away before its
// answer (nginx's 499): it shows in the access log and api_requests_total, never to a client.
const StatusClientClosedRequest = 499

// ErrShuttingDown is the cause a server gives the contexts of the requests it cuts off at the
// end of its shutdown grace (context.WithCancelCause on its BaseContext): they are answered as
// what failed them (503 for a query), not as a client that went away.
var ErrShuttingDown = errors.New("the server is shutting down")

// clientGone reports whether the request's context ended because its client went away.
func clientGone(r *http.Request) bool {
	return r.Context().Err() != nil && context.Cause(r.Context()) == context.Canceled
}

// Error answers with the problem that err stands for. Internal errors are logged with
// their cause and shown with a generic detail; the client's own disconnect is only logged.
func (s *Server) Error(w http.ResponseWriter, r *http.Request, err error) {
	writeError(s.log, w, r, err)
}

// WriteError answers err as this API does (problem+json, the status of its code), for
// code outside the handlers such as a rate limiter's Guard middleware:
//
//	w.Header().Set("Retry-After", "12")
//	rthttp.WriteError(w, r, trading.Errorf(trading.ERATELIMIT, "too many requests"))
//
// Internal errors are logged to slog.Default().
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	writeError(slog.Default(), w, r, err)
}

func writeError(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	code := errorCode(err)
	status := ErrorStatus(err)
	detail := trading.ErrorMessage(err)
	if status == http.StatusInternalServerError {
		code = trading.EINTERNAL // an unknown code is a bug too: log it, show nothing
	}
	if errors.Is(err, context.Canceled) && clientGone(r) {
		// The client went away while a dependency worked for it: nobody reads this answer,
		// and it is no failure of the server or the database (the 503 it was counted with
		// the 5xx the error-rate alert watches).
		log.DebugContext(r.Context(), "request canceled by client", "request_id", RequestID(r.Context()), "route", r.Pattern)
		writeProblem(w, StatusClientClosedRequest, "the client closed the request", nil)
		return
	}

	switch code {
	case trading.EINTERNAL:
		log.ErrorContext(r.Context(), "internal error", "error", err, "request_id", RequestID(r.Context()), "route", r.Pattern)
		detail = "internal error"
	case trading.EUNAVAILABLE:
		log.WarnContext(r.Context(), "dependency unavailable", "error", err, "request_id", RequestID(r.Context()), "route", r.Pattern)
		if detail == "" || detail == "internal error" {
			detail = "a dependency is unavailable, try again shortly"
		}
		// Clients may retry soon: the pool reconnects by itself.
		w.Header().Set("Retry-After", "1")
	case trading.EUNAUTHORIZED:
		w.Header().Set("WWW-Authenticate", `Bearer`)
	case trading.ERATELIMIT:
		// The limiter knows when the window frees up and should have said so; a refusal
		// without Retry-After would break the contract, so fall back to one window.
		if w.Header().Get("Retry-After") == "" {
			w.Header().Set("Retry-After", "60")
		}
	}
	var fields []trading.FieldError
	if code == trading.EINVALID {
		fields = trading.ErrorFields(err)
	}
	writeProblem(w, status, detail, fields)
}

// problem writes a problem+json body. Everything that answers with an error ends here.
func (s *Server) problem(w http.ResponseWriter, r *http.Request, status int, detail string, fields []trading.FieldError) {
	writeProblem(w, status, detail, fields)
}

func writeProblem(w http.ResponseWriter, status int, detail string, fields []trading.FieldError) {
	if status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", `Bearer`)
	}
	if status == http.StatusUnprocessableEntity && fields == nil {
		fields = []trading.FieldError{} // the contract promises the member on every 422
	}
	title := http.StatusText(status)
	if status == StatusClientClosedRequest {
		title = "Client Closed Request"
	}
	p := Problem{Type: "about:blank", Title: title, Status: status, Detail: detail, Errors: fields}
	if status == http.StatusUnprocessableEntity {
		writeJSONAs(w, status, "application/problem+json", problem422{p, fields})
		return
	}
	writeJSONAs(w, status, "application/problem+json", p)
}

// problem422 always shows "errors", even when empty.
type problem422 struct {
	Problem
	Errors []trading.FieldError `json:"errors"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONAs(w, status, "application/json", v)
}

func writeJSONAs(w http.ResponseWriter, status int, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a bug gets here (a type that cannot marshal); answer without a body.
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	writeBody(w, status, contentType, append(b, '\n'))
}

// writeEncoded answers JSON that is already encoded: prefix, b and suffix, which together
// must be one JSON value.
func writeEncoded(w http.ResponseWriter, status int, prefix string, b []byte, suffix string) {
	body := make([]byte, 0, len(prefix)+len(b)+len(suffix)+1)
	body = append(body, prefix...)
	body = append(body, b...)
	body = append(body, suffix...)
	writeBody(w, status, "application/json", append(body, '\n'))
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
