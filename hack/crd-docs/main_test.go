package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed references must be what the generator writes from the committed CRD and
// OpenAPI document: a changed field or route without `make docs` fails here.
func TestDocsCurrent(t *testing.T) {
	root := filepath.Join("..", "..")
	want, err := generate(root)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Errorf("%s: %v (run make docs)", name, err)
			continue
		}
		if !bytes.Equal(got, w) {
			t.Errorf("%s is stale: run make docs and commit it", name)
		}
	}
}

// The reference shows what a user needs from the schema: defaults, enums, CEL messages,
// and every route of the API.
func TestDocsContent(t *testing.T) {
	docs, err := generate(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	crd := string(docs[crdDoc])
	for _, want := range []string{
		"## `spec.postgres.managed`",
		"spec.postgres.managed and spec.postgres.external are mutually exclusive: set only one",
		"metadata.name must be at most 40 characters",
		"## `status`",
		"`maxDailyLoss`",
	} {
		if !strings.Contains(crd, want) {
			t.Errorf("%s lacks %q", crdDoc, want)
		}
	}
	api := string(docs[apiDoc])
	for _, want := range []string{
		"### POST /api/orders/{id}/approve",
		"### GET /api/summary",
		"### HEAD /api/summary",
		"| 429 |",
		"### OrderRequest",
	} {
		if !strings.Contains(api, want) {
			t.Errorf("%s lacks %q", apiDoc, want)
		}
	}
}
