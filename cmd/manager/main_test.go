package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

// source is like a controller-runtime watch source: functions inside, a String method.
type source struct{ Handler func() }

func (source) String() string { return "kind source: *v1.ServiceMonitor" }

// A value JSON cannot encode is logged by its String method; what JSON encodes (a time, a
// struct of plain fields) is left as it was.
func TestReadableAttr(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{ReplaceAttr: readableAttr}))
	when := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	log.Info("Starting EventSource", "source", source{Handler: func() {}}, "at", when, "plain", struct{ N int }{3})
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("not JSON: %s", out.String())
	}
	if line["source"] != "kind source: *v1.ServiceMonitor" {
		t.Errorf("source logged as %v", line["source"])
	}
	if line["at"] != "2026-11-30T06:00:00Z" {
		t.Errorf("a time logged as %v", line["at"])
	}
	if p, ok := line["plain"].(map[string]any); !ok || p["N"] != float64(3) {
		t.Errorf("a plain struct logged as %v", line["plain"])
	}
}
