package http_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/pb33f/jsonschema/v6"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/paths"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
	"github.com/pb33f/libopenapi/orderedmap"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/ratelimit"
)

// openAPIFile is where the document is read from: the file that openapi.go embeds.
const openAPIFile = "openapi.json"

// apiContract is openapi.json as a client generator or an outside test reads it, loaded
// once with libopenapi. Every exchange that env.do makes is checked against it (conform),
// so that the document describes what the server really sends (status codes, media types,
// bodies, headers), not what someone remembered it sends.
type apiContract struct {
	doc       libopenapi.Document
	model     *v3.Document
	validator validator.Validator
	// lenient is validator without strict mode, for the one body that is a free-form
	// object: the document itself (strict mode reports every member of an object whose
	// schema lists no properties; TestOpenAPIDocumentValid checks what it holds).
	lenient validator.Validator
	// problem is components.schemas.Problem: the body of the 404s and 405s the mux answers
	// for paths and methods the document does not have (so no operation describes them).
	problem *base.Schema
	schemas schema_validation.SchemaValidator
	// everywhere are the headers that every response carries (security headers and the
	// request id): OpenAPI has no global response headers, so info.description names them
	// instead of each response; loadContract checks that it does.
	everywhere map[string]bool
}

// generalHeaders are HTTP's own, set by net/http or described by the response's content.
var generalHeaders = []string{"Content-Type", "Content-Length", "Date"}

var contract = sync.OnceValues(func() (*apiContract, error) {
	b, err := os.ReadFile(openAPIFile)
	if err != nil {
		return nil, err
	}
	return loadContract(b)
})

func loadContract(b []byte) (*apiContract, error) {
	doc, err := libopenapi.NewDocument(b)
	if err != nil {
		return nil, fmt.Errorf("openapi.json: %w", err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("openapi.json: build model: %w", err)
	}
	c := &apiContract{doc: doc, model: &model.Model, everywhere: map[string]bool{}}
	names := []string{"X-Request-ID"}
	for k := range wantSecurityHeaders {
		names = append(names, k)
	}
	for _, k := range names {
		if !strings.Contains(c.model.Info.Description, k) {
			return nil, fmt.Errorf("openapi.json: info.description does not say that every response carries %s", k)
		}
		c.everywhere[http.CanonicalHeaderKey(k)] = true
	}
	// Formats (uuid, date-time) are asserted, not mere annotations; strict mode reports body
	// members that the document does not declare (a generated client would drop them).
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions(), config.WithStrictMode(), config.WithStrictIgnoredHeadersExtra(names...))
	if len(errs) > 0 {
		return nil, fmt.Errorf("openapi.json: validator: %v", errs)
	}
	c.validator = v
	if c.lenient, errs = validator.NewValidator(doc, config.WithFormatAssertions()); len(errs) > 0 {
		return nil, fmt.Errorf("openapi.json: validator: %v", errs)
	}
	c.schemas = schema_validation.NewSchemaValidator(config.WithFormatAssertions())
	p, ok := c.model.Components.Schemas.Get("Problem")
	if !ok {
		return nil, fmt.Errorf("openapi.json: no components.schemas.Problem")
	}
	c.problem = p.Schema()
	return c, nil
}

// exchange is one request the tests sent and the answer they got.
type exchange struct {
	method, path string
	reqHeader    http.Header
	reqBody      []byte
	status       int
	header       http.Header
	body         []byte
}

func (x exchange) request() *http.Request {
	r, err := http.NewRequest(x.method, "http://tradingd"+x.path, bytes.NewReader(x.reqBody))
	if err != nil {
		panic(err) // the test sent this very request
	}
	r.Header = x.reqHeader.Clone()
	return r
}

func (x exchange) String() string { return fmt.Sprintf("%s %s → %d", x.method, x.path, x.status) }

// check returns what in x the document does not describe.
func (c *apiContract) check(x exchange) []string {
	req := x.request()
	v := c.validator
	if x.path == "/openapi.json" {
		v = c.lenient
	}
	resp := &http.Response{StatusCode: x.status, Header: x.header.Clone(), Body: io.NopCloser(bytes.NewReader(x.body)), Request: req}
	// The validator checks a HEAD against the GET operation when the path has no head one:
	// a HEAD the document does not describe is undocumented here, as any other method.
	if item, _, _ := paths.FindPath(req, c.model, nil); x.method == http.MethodHead && (item == nil || item.Head == nil) {
		return c.checkUndocumented(x)
	}
	_, errs := v.ValidateHttpResponse(req, resp)
	if len(errs) > 0 && (errs[0].IsPathMissingError() || errs[0].IsOperationMissingError()) {
		return c.checkUndocumented(x)
	}
	var problems []string
	for _, e := range errs {
		problems = append(problems, "response: "+describe(e))
	}
	if r := c.responseObject(req, x.status); r != nil {
		problems = append(problems, c.checkHeaders(x, r)...)
		if orderedmap.Len(r.Content) == 0 && len(x.body) > 0 {
			problems = append(problems, "the response declares no body")
		}
		if x.method == http.MethodHead && orderedmap.Len(r.Content) > 0 {
			problems = append(problems, "the response to a HEAD declares a body")
		}
	}
	// A request the server carried out is one the document must let a client send; a
	// refused one is often refused on purpose (the tests probe 400s and 422s).
	if x.status >= 200 && x.status < 300 {
		_, errs := c.validator.ValidateHttpRequest(x.request())
		for _, e := range errs {
			problems = append(problems, fmt.Sprintf("request %s, which the server accepted: %s", truncate(x.reqBody), describe(e)))
		}
	}
	return problems
}

// checkUndocumented checks an answer for a path or method that the document does not have:
// only the mux's 404 and 405 may get there, as problems like every error.
func (c *apiContract) checkUndocumented(x exchange) []string {
	if x.status != http.StatusNotFound && x.status != http.StatusMethodNotAllowed {
		return []string{"the document has no such operation"}
	}
	if ct := x.header.Get("Content-Type"); ct != "application/problem+json" {
		return []string{"Content-Type " + ct + ", want application/problem+json"}
	}
	var problems []string
	_, errs := c.schemas.ValidateSchemaBytes(c.problem, x.body)
	for _, e := range errs {
		problems = append(problems, "not a Problem: "+describe(e))
	}
	return problems
}

// responseObject is the document's response for status of the operation that req matches.
func (c *apiContract) responseObject(req *http.Request, status int) *v3.Response {
	item, _, _ := paths.FindPath(req, c.model, nil)
	if item == nil {
		return nil
	}
	op := item.GetOperations().GetOrZero(strings.ToLower(req.Method))
	if op == nil || op.Responses == nil {
		return nil
	}
	return op.Responses.Codes.GetOrZero(fmt.Sprint(status))
}

// checkHeaders reports headers that the server sent but the response does not declare:
// the library's strict mode looks only at responses that declare some headers.
func (c *apiContract) checkHeaders(x exchange, r *v3.Response) []string {
	var problems []string
	for name := range x.header {
		name = http.CanonicalHeaderKey(name)
		if c.everywhere[name] || slices.Contains(generalHeaders, name) {
			continue
		}
		declared := false
		if r.Headers != nil {
			for k := range r.Headers.KeysFromOldest() {
				declared = declared || strings.EqualFold(k, name)
			}
		}
		if !declared {
			problems = append(problems, fmt.Sprintf("header %s: %s is not declared", name, x.header.Get(name)))
		}
	}
	slices.Sort(problems)
	return problems
}

// conform fails t when the document does not describe x.
func conform(t testing.TB, x exchange) {
	t.Helper()
	c, err := contract()
	if err != nil {
		t.Fatal(err)
	}
	if problems := c.check(x); len(problems) > 0 {
		t.Errorf("openapi.json does not describe %s (body %s):\n\t%s", x, truncate(x.body), strings.Join(problems, "\n\t"))
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

func describe(e error) string {
	s := e.Error()
	if len(s) > 600 {
		s = s[:600] + "…"
	}
	return s
}

// TestOpenAPIDocumentValid: openapi.json is a valid OpenAPI 3.1 document as libopenapi reads
// it (the schema of OpenAPI 3.1 itself), so that clients can be generated from it. TestOpenAPI
// checks it against the routes; this, that a tool can read it at all.
func TestOpenAPIDocumentValid(t *testing.T) {
	t.Parallel()
	c, err := contract()
	if err != nil {
		t.Fatal(err)
	}
	if v := c.doc.GetVersion(); !strings.HasPrefix(v, "3.1.") {
		t.Errorf("version %q, want 3.1.x", v)
	}
	if ok, errs := c.validator.ValidateDocument(); !ok || len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("invalid document: %s", describe(e))
			for _, f := range e.SchemaValidationErrors {
				t.Errorf("\t%s at %s", f.Reason, f.KeywordLocation)
			}
		}
		if len(errs) == 0 {
			t.Error("invalid document, without errors")
		}
	}

	// OpenAPI's own schema does not look inside Schema Objects (a "type": "strnig" passes
	// it): each one is checked against JSON Schema 2020-12, the dialect of OpenAPI 3.1.
	b, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	compiler := jsonschema.NewCompiler()
	compiler.DefaultDraft(jsonschema.Draft2020)
	const url = "file:///openapi.json"
	if err := compiler.AddResource(url, raw); err != nil {
		t.Fatal(err)
	}
	pointers := schemaPointers(raw, "")
	if len(pointers) < 30 {
		t.Fatalf("found only %d schemas in the document: %v", len(pointers), pointers)
	}
	for _, ptr := range pointers {
		if _, err := compiler.Compile(url + "#" + ptr); err != nil {
			t.Errorf("schema %s is not valid JSON Schema: %v", ptr, err)
		}
	}
}

// schemaPointers returns the JSON pointers of the Schema Objects in an OpenAPI document:
// components.schemas' members and every "schema" of a parameter, header or media type.
// (Schemas nested in those are checked with them.)
func schemaPointers(v any, at string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			ptr := at + "/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(k)
			switch {
			case k == "schema":
				out = append(out, ptr)
			case at == "/components/schemas":
				out = append(out, ptr)
			case at == "/components" && k == "schemas", !strings.HasPrefix(at, "/components/schemas"):
				out = append(out, schemaPointers(v[k], ptr)...)
			}
		}
	case []any:
		for i, item := range v {
			out = append(out, schemaPointers(item, fmt.Sprintf("%s/%d", at, i))...)
		}
	}
	return out
}

// newLimitedEnv is an env whose routes are behind tradingd's real limiter with cfg (per
// process), and limited, which fails t unless a response carries what api.md's Rate limits
// section says every answer of a counted request carries: RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset, and Retry-After on a 429.
func newLimitedEnv(t *testing.T, cfg ratelimit.Config) (e *env, limited func(*response) *response) {
	t.Helper()
	limiter := ratelimit.New(cfg, ratelimit.Options{Logger: slog.New(slog.DiscardHandler)})
	e = newEnv(t, func(o *envOptions) {
		o.guard = []rthttp.Middleware{func(rt rthttp.Route, next http.Handler) http.Handler {
			return limiter.Route(rt.Class, rt.Pattern, next)
		}}
	})
	limited = func(r *response) *response {
		t.Helper()
		if r.header.Get("RateLimit-Limit") == "" || r.header.Get("RateLimit-Remaining") == "" || r.header.Get("RateLimit-Reset") == "" {
			t.Errorf("%s without RateLimit headers: %v", r, r.header)
		}
		if r.status == http.StatusTooManyRequests && r.header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After: %v", r.header)
		}
		return r
	}
	return e, limited
}

// TestRateLimitedExchangesConform runs the API behind tradingd's real limiter (per process,
// tight limits), so that conform sees what only a limited route sends: RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset on every answer of a counted request, and 429 with
// Retry-After once a bucket is empty (api.md, Rate limits), for each class.
func TestRateLimitedExchangesConform(t *testing.T) {
	t.Parallel()
	e, limited := newLimitedEnv(t, ratelimit.Config{Login: 3, Trading: 2, Data: 2, GlobalPerMinute: 100, GlobalPerDay: 1000})
	e.addUser("trader1", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)

	// login: three per client IP, then 429; refresh and logout have buckets of their own.
	pair := e.login("trader1")
	riskTok := e.token("risk1")
	limited(e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": "wrong"})).problem(401)
	limited(e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": e.passwords["trader1"]})).problem(429)
	limited(e.do("POST", "/api/auth/refresh", "", map[string]string{})).problem(422)
	var refreshed rthttp.TokenPair
	limited(e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken})).want(200).decode(&refreshed)
	limited(e.do("POST", "/api/auth/logout", "", "{")).problem(400)
	tok := refreshed.AccessToken

	// trading: two per user, then 429.
	limited(e.do("POST", "/api/orders", tok, map[string]string{"symbol": "BTC/USD"})).problem(422)
	var o order
	limited(e.do("POST", "/api/orders", tok, map[string]string{"symbol": "BTC/USD", "side": "buy", "quantity": "1", "price": "2"})).want(201).decode(&o)
	limited(e.do("POST", "/api/orders", tok, map[string]string{"symbol": "BTC/USD", "side": "buy", "quantity": "1", "price": "2"})).problem(429)
	limited(e.do("POST", "/api/orders/"+o.ID+"/approve", riskTok, nil)).want(200)
	limited(e.do("POST", "/api/orders/"+o.ID+"/reject", riskTok, map[string]string{"reason": "late"})).problem(409)
	limited(e.do("POST", "/api/orders/"+o.ID+"/approve", riskTok, nil)).problem(429)

	// data: two per user, then 429.
	limited(e.do("GET", "/api/orders/"+o.ID, tok, nil)).want(200)
	limited(e.do("GET", "/api/orders?limit=0", tok, nil)).problem(422)
	limited(e.do("GET", "/api/positions", tok, nil)).problem(429)
	limited(e.do("GET", "/api/summary", riskTok, nil)).want(200)
	limited(e.do("GET", "/api/orders/pending", riskTok, nil)).want(200)
	limited(e.do("GET", "/api/trades", riskTok, nil)).problem(429)

	// logout last: it ends the login whose tokens the requests above used.
	limited(e.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": refreshed.RefreshToken})).want(204)
}

// A request that authentication refuses is limited per client IP in its route's class (api.md:
// "per client IP before login"): it was not counted at all, so a client could hammer any route
// with garbage or expired tokens without end. It uses neither a user's budget nor the global
// buckets of its IP, which hold its logins.
func TestUnauthenticatedRequestsLimitedPerClientIP(t *testing.T) {
	t.Parallel()
	e, limited := newLimitedEnv(t, ratelimit.Config{Login: 2, Trading: 2, Data: 3, GlobalPerMinute: 4, GlobalPerDay: 1000})
	e.addUser("trader1", trading.RoleTrader)
	tok := e.token("trader1") // the IP's first login

	// data: three refused requests from this IP, whatever the route and the bad token, then 429.
	limited(e.do("GET", "/api/orders", "", nil)).problem(401)
	limited(e.do("GET", "/api/positions", "garbage", nil)).problem(401)
	if r := limited(e.do("GET", "/api/auth/me", tok+"x", nil)); r.header.Get("RateLimit-Remaining") != "0" {
		t.Errorf("third refused data request: RateLimit-Remaining %q, want 0", r.header.Get("RateLimit-Remaining"))
	}
	limited(e.do("GET", "/api/summary", "", nil)).problem(429)
	// trading: a bucket of its own.
	order := map[string]string{"symbol": "BTC/USD", "side": "buy", "quantity": "1", "price": "2"}
	limited(e.do("POST", "/api/orders", "garbage", order)).problem(401)
	limited(e.do("POST", "/api/orders/"+uuid.NewString()+"/approve", "", nil)).problem(401)
	limited(e.do("POST", "/api/orders", "", order)).problem(429)

	// The user's own budget is untouched, and so are the IP's global buckets (4 a minute): a
	// second login passes.
	for range 3 {
		limited(e.do("GET", "/api/orders", tok, nil)).want(200)
	}
	limited(e.do("POST", "/api/orders", tok, order)).want(201)
	e.login("trader1")
}
