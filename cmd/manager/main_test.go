package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// TestMain runs the test binary as the manager itself when MANAGER_TEST_ARGS is set (the
// arguments, space-separated), so that a test can see what a user starting it would see: its
// exit status and what it printed.
func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv("MANAGER_TEST_ARGS"); ok {
		os.Args = append([]string{"manager"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runManager starts the manager with args, no cluster configured (a kubeconfig that does not
// exist, not in a pod), and returns its exit status and standard error.
func runManager(t *testing.T, args string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KUBERNETES_SERVICE_HOST=") && !strings.HasPrefix(e, "KUBECONFIG=") {
			env = append(env, e)
		}
	}
	cmd.Env = append(env, "MANAGER_TEST_ARGS="+args, "KUBECONFIG="+filepath.Join(t.TempDir(), "none"), "HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run the manager: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// A bad flag value stops the manager at start with exit status 2 and a line naming the flag,
// as a malformed --log-level or AUTOMEMLIMIT does, before it reads any cluster: a
// --max-concurrent-reconciles of 0 or less ran with one worker without a word.
func TestBadFlagValues(t *testing.T) {
	for _, args := range []string{"--max-concurrent-reconciles=0", "--max-concurrent-reconciles=-3", "--log-level=verbose"} {
		code, stderr := runManager(t, args)
		flagName := strings.SplitN(args, "=", 2)[0]
		if code != 2 || !strings.Contains(stderr, flagName) {
			t.Errorf("manager %s: exit %d, stderr %q; want exit 2 naming %s", args, code, stderr, flagName)
		}
	}
}
