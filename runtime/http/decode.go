package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	trading "github.com/findmy/trading-operator/runtime"
)

// errBodyTooLarge and errMediaType are answered with 413 and 415, which have no trading
// code because no service ever returns them.
var (
	errBodyTooLarge = errors.New("request body too large")
	errMediaType    = errors.New("unsupported media type")
	// errContentCoding: a body sent with a Content-Encoding (gzip, say). Nothing here decodes
	// one, and reading it as plain JSON either refused a gzipped body as "not UTF-8 text" or
	// took a plain one its header said was compressed: 415, as RFC 9110 12.5.3 has it.
	errContentCoding = errors.New("unsupported content coding")
	// errBodyTimeout: the body did not arrive within the server's read timeout (a stalled or
	// very slow client), answered with 408 rather than as malformed JSON.
	errBodyTimeout = errors.New("request body timed out")
)

// decode reads a JSON request body into v (a pointer to a struct): application/json only,
// at most the body limit, UTF-8, one JSON object whose members are v's fields, spelled exactly,
// each at most once, and nothing after it. Those are 400s, checked first; then a value of
// the wrong JSON type for a field is EINVALID naming the field, and v holds the other
// fields as read, so that a caller can list every failing field at once.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	if !isJSON(r) {
		return errMediaType
	}
	if encoded(r) {
		return errContentCoding
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	return decodeBody(body, v)
}

// decodeNoBody checks the body of a route that takes none (approve): no body at all, of any
// Content-Type, or one held to decode's rules as the body of no field, so that an empty
// object is all it may hold. A body the route would ignore is refused before anything is
// done: a client sending one (a reason meant for reject, garbage) meant something else, and
// an approve executes a trade.
func (s *Server) decodeNoBody(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	switch {
	case err != nil:
		return err
	case len(body) == 0:
		return nil
	case !isJSON(r):
		return errMediaType
	case encoded(r):
		return errContentCoding
	}
	return decodeBody(body, &struct{}{})
}

// encoded reports whether the body comes with a content coding other than identity.
func encoded(r *http.Request) bool {
	for _, v := range r.Header.Values("Content-Encoding") {
		for coding := range strings.SplitSeq(v, ",") {
			if c := strings.TrimSpace(coding); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

func isJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// readBody reads the whole request body, at most the body limit.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > s.cfg.BodyLimit {
		// Refused unread: a client waiting on Expect: 100-continue is then answered 413
		// instead of being asked for a body the server would cut off (and reset the
		// connection under while the client still sends it).
		return nil, errBodyTooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.BodyLimit))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, errBodyTimeout
	}
	if err != nil {
		return nil, decodeError(err)
	}
	return body, nil
}

// decodeBody is decode's work after the body is read.
func decodeBody(body []byte, v any) error {
	// JSON text is UTF-8 (RFC 8259 section 8.1). encoding/json would replace bytes that are
	// not with U+FFFD and carry on: a reason sent in Latin-1 was stored altered, and a name
	// of such bytes answered as text the client never sent. Malformed, before anything reads it.
	if !utf8.Valid(body) {
		return trading.Errorf(trading.EMALFORMED, "the body is not UTF-8 text")
	}
	fields := fieldsOf(v)
	if err := checkObject(body, fields); err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			// Unmarshal reports the first field of a wrong type only: name them all.
			return wrongTypes(body, fields)
		}
		return decodeError(err)
	}
	return nil
}

// wrongTypes names every member of body (an object checkObject accepted) whose value does not
// fit its field's type, as one EINVALID.
func wrongTypes(body []byte, fields map[string]reflect.Type) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return decodeError(err)
	}
	var out []trading.FieldError
	for name, raw := range members {
		var typeErr *json.UnmarshalTypeError
		if err := json.Unmarshal(raw, reflect.New(fields[name]).Interface()); errors.As(err, &typeErr) {
			out = append(out, trading.FieldError{Field: name, Message: "must be a JSON " + jsonKind(typeErr.Type.Kind().String())})
		}
	}
	slices.SortFunc(out, func(a, b trading.FieldError) int { return strings.Compare(a.Field, b.Field) })
	return trading.Invalid(out...)
}

// checkObject refuses, as malformed, what encoding/json would let through or report as
// something else: a body that is not one object (null, an array), a member that is not one
// of fields as spelled (encoding/json matches names case-insensitively: "Symbol" would set
// symbol), a member given twice (it keeps the last), and data after the object (also when
// a member has the wrong type, which Unmarshal would report first as a 422).
func checkObject(body []byte, fields map[string]reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return decodeError(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return trading.Errorf(trading.EMALFORMED, "the body must be a JSON object")
	}
	// After the opening brace the body has begun: its end is a truncated value, not an empty
	// body (encoding/json reports io.EOF for both).
	truncated := func(err error) error {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return decodeError(err)
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return truncated(err)
		}
		name, _ := tok.(string)
		switch {
		case fields[name] == nil:
			return trading.Errorf(trading.EMALFORMED, "unknown field %q", name)
		case seen[name]:
			return trading.Errorf(trading.EMALFORMED, "field %q given twice", name)
		}
		seen[name] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return truncated(err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return truncated(err)
	}
	// Anything but the end of the body after the object is refused: a client that sends
	// two objects meant something we would silently drop.
	if _, err := dec.Token(); err != io.EOF {
		return trading.Errorf(trading.EMALFORMED, "unexpected data after the JSON value")
	}
	return nil
}

// fieldNames caches the JSON members of request types.
var fieldNames sync.Map // reflect.Type -> map[string]reflect.Type

// fieldsOf returns the JSON member names of the struct v points to, with their types.
func fieldsOf(v any) map[string]reflect.Type {
	t := reflect.TypeOf(v).Elem()
	if f, ok := fieldNames.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	names := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names[name] = f.Type
	}
	fieldNames.Store(t, names)
	return names
}

func decodeError(err error) error {
	var maxErr *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &maxErr):
		return errBodyTooLarge
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return trading.Invalid(trading.FieldError{Field: typeErr.Field, Message: "must be a JSON " + jsonKind(typeErr.Type.Kind().String())})
	case errors.As(err, &typeErr):
		return trading.Errorf(trading.EMALFORMED, "the body must be a JSON object")
	case errors.As(err, &syntaxErr):
		return trading.Errorf(trading.EMALFORMED, "malformed JSON at byte %d", syntaxErr.Offset)
	case errors.Is(err, io.EOF):
		return trading.Errorf(trading.EMALFORMED, "the body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return trading.Errorf(trading.EMALFORMED, "the body ends in the middle of the JSON value")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no type for this error; the message quotes the field name.
		return trading.Errorf(trading.EMALFORMED, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	default:
		return &trading.Error{Code: trading.EMALFORMED, Message: "malformed JSON body", Err: err}
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "slice", "array":
		return "array"
	case "struct", "map", "ptr":
		return "object"
	case "bool":
		return "boolean"
	default:
		return "number"
	}
}

// decodeFailed answers a decode error.
func (s *Server) decodeFailed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, errMediaType):
		s.problem(w, r, http.StatusUnsupportedMediaType, "the body must be application/json", nil)
	case errors.Is(err, errContentCoding):
		w.Header().Set("Accept-Encoding", "identity")
		s.problem(w, r, http.StatusUnsupportedMediaType, "the body must be sent without a Content-Encoding (it is not decompressed)", nil)
	case errors.Is(err, errBodyTimeout):
		s.problem(w, r, http.StatusRequestTimeout, "the body did not arrive in time", nil)
	case errors.Is(err, errBodyTooLarge):
		s.problem(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body must be at most %d bytes", s.cfg.BodyLimit), nil)
	default:
		s.Error(w, r, err)
	}
}

// mergeFields adds the fields of extra (wrong JSON types) to the fields of err
// (validation), replacing validation's message for a field the decoder already named.
func mergeFields(err error, extra []trading.FieldError) error {
	if len(extra) == 0 {
		return err
	}
	named := map[string]bool{}
	for _, f := range extra {
		named[f.Field] = true
	}
	fields := append([]trading.FieldError(nil), extra...)
	for _, f := range trading.ErrorFields(err) {
		if !named[f.Field] {
			fields = append(fields, f)
		}
	}
	return trading.Invalid(fields...)
}
