package trading

import (
	"errors"
	"fmt"
)

// Error codes. Every implementation returns *Error with one of these so that the HTTP
// layer can map them to a status in one place, and the CLI to an exit code.
const (
	EINVALID      = "invalid"      // validation failed (422); Fields says which
	EMALFORMED    = "malformed"    // the request could not be read (400)
	EUNAUTHORIZED = "unauthorized" // no, invalid or expired credentials (401)
	EFORBIDDEN    = "forbidden"    // authenticated but not allowed (403)
	ENOTFOUND     = "not_found"    // does not exist or is not visible to the caller (404)
	ECONFLICT     = "conflict"     // state conflict (409)
	ERATELIMIT    = "rate_limited" // too many requests (429)
	EUNAVAILABLE  = "unavailable"  // a dependency is down (503)
	EINTERNAL     = "internal"     // a bug; the message is not shown to clients (500)
)

// FieldError names one invalid field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error is the application error: a code, a message safe to show to the caller and,
// for EINVALID, the fields that failed.
type Error struct {
	Code    string
	Message string
	Fields  []FieldError
	// Err is the underlying cause, kept for logs and errors.Is; never shown to clients.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("trading error: code=%s message=%s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("trading error: code=%s message=%s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid returns an EINVALID error listing every failing field.
func Invalid(fields ...FieldError) *Error {
	return &Error{Code: EINVALID, Message: "the request has invalid fields", Fields: fields}
}

// Unavailable wraps a dependency failure (database or Redis down, timeout).
func Unavailable(what string, err error) *Error {
	return &Error{Code: EUNAVAILABLE, Message: what + " is unavailable", Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for any other
// error and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the caller-safe message of err; internal errors get a generic
// text so that no SQL or stack detail leaks.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) && e.Code != EINTERNAL {
		return e.Message
	}
	return "internal error"
}

// ErrorFields returns the field errors of an EINVALID error.
func ErrorFields(err error) []FieldError {
	var e *Error
	if errors.As(err, &e) {
		return e.Fields
	}
	return nil
}
