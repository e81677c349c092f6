package http_test

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/jsonschema/v6"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// openAPIFile is where the document is read from: the file that openapi.go embeds.
const openAPIFile = "openapi.json"

// apiContract is openapi.json as a client generator or an outside test reads it, loaded
// once with libopenapi.
type apiContract struct {
	doc       libopenapi.Document
	model     *v3.Document
	validator validator.Validator
}

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
	c := &apiContract{doc: doc, model: &model.Model}
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		return nil, fmt.Errorf("openapi.json: validator: %v", errs)
	}
	c.validator = v
	return c, nil
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
