package main

// These tests run the real binary as a process, against a real PostgreSQL database of
// their own (pgtest), and check what an operator of tradingd sees: exit codes, the one-line
// errors, the admin endpoints, a login through the API, and a graceful SIGTERM.
// Run them through hack/services.sh, which provides the server.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

const testVersion = "v0.0.0-tradingd-test"

// binary is the tradingd built once for every test.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tradingd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "tradingd")
	// Not -race: bcrypt in a race-instrumented binary makes every login seconds long on a
	// small machine; the race detector is on in the tests' own process.
	build := exec.Command("go", "build",
		"-ldflags", "-X github.com/findmy/trading-operator/runtime.Version="+testVersion,
		"-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tradingd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// baseEnv is what every child gets: nothing of the test's own environment (DATABASE_URL
// there is the server's admin DSN, which no test may use directly), only PATH and HOME.
func baseEnv(kv map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for k, v := range kv {
		env = append(env, k+"="+v)
	}
	return env
}

type result struct {
	stdout, stderr string
	code           int
}

// tradingd runs the binary to completion.
func tradingd(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = baseEnv(env)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("tradingd %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{stdout.String(), stderr.String(), code}
}

func keysFor(secret string) string {
	return "k1:" + base64.StdEncoding.EncodeToString([]byte(secret))
}

var jwtKeys = keysFor("a-test-secret-of-at-least-32-bytes!")

func TestCommandLine(t *testing.T) {
	if r := tradingd(t, nil, "", "version"); r.code != 0 || r.stdout != testVersion+"\n" {
		t.Errorf("version: exit %d, stdout %q; want 0 and %q", r.code, r.stdout, testVersion)
	}
	for _, args := range [][]string{nil, {"launch"}, {"user"}, {"user", "remove"}, {"serve", "--no-such-flag"}, {"version", "--json"}} {
		r := tradingd(t, nil, "", args...)
		if r.code != 2 || !strings.Contains(r.stderr, "Usage:") {
			t.Errorf("tradingd %q: exit %d, stderr %q; want 2 and the usage", args, r.code, r.stderr)
		}
	}
	if r := tradingd(t, nil, "", "serve", "-h"); r.code != 0 || !strings.Contains(r.stdout, "-database-url") {
		t.Errorf("serve -h: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestSettingErrors: a missing or malformed setting stops the process before it touches
// anything, with exit code 2 and one line that names the setting.
func TestSettingErrors(t *testing.T) {
	// Valid but pointing nowhere: validation must fail before any connection is tried.
	dsn := "postgres://nobody@127.0.0.1:1/nothing?sslmode=disable"
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		setting string
	}{
		{"serve without DATABASE_URL", []string{"serve"}, map[string]string{"JWT_KEYS": jwtKeys}, "DATABASE_URL"},
		{"migrate without DATABASE_URL", []string{"migrate"}, nil, "DATABASE_URL"},
		{"user add without DATABASE_URL", []string{"user", "add", "--username", "u", "--role", "trader"}, nil, "DATABASE_URL"},
		{"serve without JWT keys", []string{"serve"}, map[string]string{"DATABASE_URL": dsn}, "JWT_KEYS"},
		{"malformed JWT_KEYS", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": "k1:short"}, "JWT_KEYS"},
		{"unreadable JWT_KEYS_FILE", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS_FILE": "/nonexistent/keys"}, "JWT_KEYS_FILE"},
		{"malformed ACCESS_TOKEN_TTL", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "ACCESS_TOKEN_TTL": "one hour"}, "ACCESS_TOKEN_TTL"},
		{"malformed --access-token-ttl", []string{"serve", "--access-token-ttl", "60"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys}, "ACCESS_TOKEN_TTL"},
		{"malformed TRUSTED_PROXIES", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"},
		{"malformed MAX_PRICE", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "MAX_PRICE": "-1"}, "MAX_PRICE"},
		{"MAX_QUANTITY beyond what the database stores", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "MAX_QUANTITY": "1e12"}, "MAX_QUANTITY"},
		{"malformed REDIS_URL", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "REDIS_URL": "localhost:6379"}, "REDIS_URL"},
		{"REDIS_CA_FILE without TLS", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "REDIS_URL": "redis://cache:6379/0", "REDIS_CA_FILE": "/proc/version"}, "REDIS_CA_FILE"},
		{"REDIS_CA_FILE unreadable", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "REDIS_URL": "rediss://cache:6379/0", "REDIS_CA_FILE": "/nonexistent/ca.crt"}, "REDIS_CA_FILE"},
		{"REDIS_CA_FILE not PEM", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "REDIS_URL": "rediss://cache:6379/0", "REDIS_CA_FILE": "/proc/version"}, "REDIS_CA_FILE"},
		{"REDIS_KEY_PREFIX with a glob character", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "REDIS_KEY_PREFIX": "stack*"}, "REDIS_KEY_PREFIX"},
		{"malformed AUTOMEMLIMIT", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "AUTOMEMLIMIT": "90%"}, "AUTOMEMLIMIT"},
		{"malformed SYMBOLS", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "SYMBOLS": "BTCUSD"}, "SYMBOLS"},
		{"malformed LOG_LEVEL", []string{"serve"}, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "LOG_LEVEL": "chatty"}, "LOG_LEVEL"},
		{"malformed DATABASE_URL", []string{"migrate"}, map[string]string{"DATABASE_URL": "mysql://a@b/c"}, "DATABASE_URL"},
		{"DATABASE_URL pgx refuses", []string{"migrate"}, map[string]string{"DATABASE_URL": "postgres://a:pw@b/c?sslmode=sometimes"}, "DATABASE_URL"},
		{"DATABASE_URL pgx refuses, serve", []string{"serve"}, map[string]string{"DATABASE_URL": "host=b port=x", "JWT_KEYS": jwtKeys}, "DATABASE_URL"},
		// Pool parameters are the pool's to parse (pgxpool): checked before serve logs its start.
		{"DATABASE_URL with a malformed pool parameter", []string{"serve"}, map[string]string{"DATABASE_URL": dsn + "&pool_max_conns=x", "JWT_KEYS": jwtKeys}, "DATABASE_URL"},
		// PGSSLROOTCERT (the operator's external-database CA) is read as the DSN's sslrootcert.
		{"PGSSLROOTCERT missing", []string{"migrate"}, map[string]string{"DATABASE_URL": "postgres://a@b/c?sslmode=verify-full", "PGSSLROOTCERT": "/nonexistent/ca.crt"}, "DATABASE_URL"},
		{"--jwt-keys without a value", []string{"serve", "--jwt-keys"}, map[string]string{"DATABASE_URL": dsn}, "JWT_KEYS"},
		{"--database-url without a value", []string{"migrate", "--database-url"}, nil, "DATABASE_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tradingd(t, tt.env, "", tt.args...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", r.code, r.stderr)
			}
			if want := "tradingd: " + tt.setting + ": "; !strings.HasPrefix(r.stderr, want) {
				t.Errorf("stderr %q does not start with %q", r.stderr, want)
			}
			if strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", r.stderr)
			}
		})
	}
}

func TestMigrate(t *testing.T) {
	t.Run("twice", func(t *testing.T) {
		env := map[string]string{"DATABASE_URL": pgtest.NewDatabase(t)}
		for i := range 2 {
			r := tradingd(t, env, "", "migrate")
			if r.code != 0 || !strings.Contains(r.stdout, "version") {
				t.Fatalf("migrate #%d: exit %d, stdout %q, stderr %s", i+1, r.code, r.stdout, r.stderr)
			}
		}
	})
	t.Run("concurrently", func(t *testing.T) {
		env := map[string]string{"DATABASE_URL": pgtest.NewDatabase(t)}
		var wg sync.WaitGroup
		results := make([]result, 2)
		for i := range results {
			wg.Go(func() { results[i] = tradingd(t, env, "", "migrate") })
		}
		wg.Wait()
		for i, r := range results {
			if r.code != 0 {
				t.Errorf("migrate #%d: exit %d, stderr %s", i+1, r.code, r.stderr)
			}
		}
		if results[0].stdout != results[1].stdout {
			t.Errorf("the two migrations report different versions: %q and %q", results[0].stdout, results[1].stdout)
		}
	})
	// In a Kubernetes container the kubelet mounts the termination log, and the operator
	// reads the schema version from it; elsewhere no such file is made.
	t.Run("termination log", func(t *testing.T) {
		dir := t.TempDir()
		mounted, absent := filepath.Join(dir, "termination-log"), filepath.Join(dir, "absent")
		if err := os.WriteFile(mounted, []byte("left from an earlier run, longer than the report"), 0o644); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"DATABASE_URL": pgtest.NewDatabase(t), "TERMINATION_LOG": mounted}
		if r := tradingd(t, env, "", "migrate"); r.code != 0 {
			t.Fatalf("migrate: exit %d, stderr %s", r.code, r.stderr)
		}
		want := fmt.Sprintf("database schema at version %d\n", postgres.SchemaVersion)
		if got, err := os.ReadFile(mounted); err != nil || string(got) != want {
			t.Errorf("termination log holds %q (%v), want %q", got, err, want)
		}
		env["TERMINATION_LOG"] = absent
		if r := tradingd(t, env, "", "migrate"); r.code != 0 || strings.Contains(r.stderr, "termination") {
			t.Fatalf("migrate without the file: exit %d, stderr %s", r.code, r.stderr)
		}
		if _, err := os.Stat(absent); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("migrate created %s (%v); only a mounted file is written", absent, err)
		}
	})
}

func TestServeRefusesUnmigratedDatabase(t *testing.T) {
	env := map[string]string{
		"DATABASE_URL": pgtest.NewDatabase(t),
		"JWT_KEYS":     jwtKeys,
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	}
	r := tradingd(t, env, "", "serve")
	if r.code == 0 {
		t.Fatalf("serve on an unmigrated database exited 0; stderr %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "tradingd migrate") {
		t.Errorf("stderr does not say to run `tradingd migrate`: %s", r.stderr)
	}
	// LOG_FORMAT=json (the default): the failure is a JSON line too, the last one.
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("stderr line is not JSON: %s", line)
		}
	}
}

// TestServeMissingDatabase: a database that does not exist will not appear by waiting, so
// serve fails at once (exit 1) instead of retrying.
func TestServeMissingDatabase(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/no_such_database_here"
	r := tradingd(t, map[string]string{
		"DATABASE_URL": u.String(),
		"JWT_KEYS":     jwtKeys,
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	}, "", "serve")
	if r.code != 1 || !strings.Contains(r.stderr, "no_such_database_here") {
		t.Errorf("exit %d, stderr %s; want 1 and the database named", r.code, r.stderr)
	}
}

// TestFailureInTerminationLog: in a pod a failed start's line is in the logs only, unless it
// is also in the termination log, which the kubelet mounts (TERMINATION_LOG, a file that
// exists) and shows as the container's termination message: `kubectl describe pod` and the
// operator's conditions then say why the container exits. Elsewhere no file is made, and a
// clean stop writes nothing.
func TestFailureInTerminationLog(t *testing.T) {
	// mounted is a termination log as the kubelet leaves it: there, and empty.
	mounted := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "termination-log")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// holds checks that path holds the line tradingd ended stderr with; json: stderr is the
	// logger's, whose last line's msg is that line.
	holds := func(t *testing.T, path string, r result, json bool) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		want := lines[len(lines)-1]
		if json {
			want = jsonMsg(t, want)
		}
		if !strings.HasPrefix(want, "tradingd: ") {
			t.Fatalf("stderr does not end with tradingd's line: %s", r.stderr)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != want+"\n" {
			t.Errorf("termination log holds %q (%v), want %q", got, err, want+"\n")
		}
	}
	dsn := "postgres://nobody@127.0.0.1:1/nothing?sslmode=disable"

	// Settings are resolved in api.md's order, TERMINATION_LOG near the end, and some are
	// checked after all are read: the path is known whichever fails, wherever it comes from.
	settingErrors := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"malformed DATABASE_URL, read before it", nil, map[string]string{"DATABASE_URL": "mysql://a@b/c", "JWT_KEYS": jwtKeys}},
		{"missing JWT_KEYS, checked after all", nil, map[string]string{"DATABASE_URL": dsn}},
		{"malformed DEMO_USERS, read after it", nil, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "DEMO_USERS": "maybe"}},
		{"DATABASE_URL pgx refuses, checked after Load", nil, map[string]string{"DATABASE_URL": "host=b port=x", "JWT_KEYS": jwtKeys}},
		{"--database-url without a value", []string{"--database-url"}, map[string]string{"JWT_KEYS": jwtKeys}},
	}
	for _, tt := range settingErrors {
		t.Run(tt.name, func(t *testing.T) {
			for _, how := range []string{"env", "flag"} {
				path := mounted(t)
				env, args := with(tt.env), append([]string{"serve"}, tt.args...)
				if how == "env" {
					env["TERMINATION_LOG"] = path
				} else {
					args = append([]string{"serve", "--termination-log", path}, tt.args...)
				}
				r := tradingd(t, env, "", args...)
				if r.code != 2 {
					t.Errorf("TERMINATION_LOG from the %s: exit %d, want 2 (stderr %q)", how, r.code, r.stderr)
				}
				holds(t, path, r, false)
			}
		})
	}

	t.Run("absent", func(t *testing.T) {
		absent := filepath.Join(t.TempDir(), "absent")
		r := tradingd(t, map[string]string{"DATABASE_URL": dsn, "TERMINATION_LOG": absent}, "", "serve")
		if r.code != 2 {
			t.Errorf("exit %d, want 2 (stderr %q)", r.code, r.stderr)
		}
		if _, err := os.Stat(absent); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("serve created %s (%v); only a mounted file is written", absent, err)
		}
	})

	// The kubelet reads 4096 bytes of it: a longer line is cut there, marked, in whole
	// characters.
	t.Run("longer than the kubelet reads", func(t *testing.T) {
		path := mounted(t)
		r := tradingd(t, map[string]string{"DATABASE_URL": dsn, "JWT_KEYS": jwtKeys, "SYMBOLS": "X" + strings.Repeat("é", 3000),
			"TERMINATION_LOG": path}, "", "serve")
		if r.code != 2 {
			t.Errorf("exit %d, want 2 (stderr %q)", r.code, r.stderr)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text, cut := strings.CutSuffix(string(got), "...\n")
		if len(got) > 4096 || len(got) < 4090 || !cut || !utf8.Valid(got) || !strings.HasPrefix(r.stderr, text) {
			t.Errorf("termination log holds %d bytes ending in %q (valid UTF-8: %v), want at most 4096 of the line, cut whole and marked",
				len(got), got[max(0, len(got)-16):], utf8.Valid(got))
		}
	})

	t.Run("schema too old", func(t *testing.T) {
		path := mounted(t)
		r := tradingd(t, map[string]string{
			"DATABASE_URL":    pgtest.NewDatabase(t),
			"JWT_KEYS":        jwtKeys,
			"LISTEN_ADDR":     "127.0.0.1:0",
			"ADMIN_ADDR":      "127.0.0.1:0",
			"TERMINATION_LOG": path,
		}, "", "serve")
		if r.code != 1 {
			t.Errorf("exit %d, want 1 (stderr %s)", r.code, r.stderr)
		}
		holds(t, path, r, true)
		if got, _ := os.ReadFile(path); !strings.Contains(string(got), "run `tradingd migrate`") {
			t.Errorf("termination log %q does not say to run `tradingd migrate`", got)
		}
	})

	// The migration Job's container: its failure is the operator's MigrationFailed.
	t.Run("migrate fails", func(t *testing.T) {
		u, err := url.Parse(pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/no_such_database_here"
		path := mounted(t)
		r := tradingd(t, map[string]string{"DATABASE_URL": u.String(), "TERMINATION_LOG": path}, "", "migrate")
		if r.code != 1 {
			t.Errorf("exit %d, want 1 (stderr %s)", r.code, r.stderr)
		}
		holds(t, path, r, true)
		if got, _ := os.ReadFile(path); !strings.Contains(string(got), "no_such_database_here") {
			t.Errorf("termination log %q does not name the database", got)
		}
	})

	t.Run("clean stop", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		if r := tradingd(t, map[string]string{"DATABASE_URL": dsn}, "", "migrate"); r.code != 0 {
			t.Fatalf("migrate: %d %s", r.code, r.stderr)
		}
		path := mounted(t)
		p := startServe(t, map[string]string{
			"DATABASE_URL":    dsn,
			"JWT_KEYS":        jwtKeys,
			"LISTEN_ADDR":     "127.0.0.1:0",
			"ADMIN_ADDR":      "127.0.0.1:0",
			"TERMINATION_LOG": path,
		})
		p.waitLog("serving")
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0", code)
		}
		if got, err := os.ReadFile(path); err != nil || len(got) != 0 {
			t.Errorf("termination log holds %q (%v) after a clean stop, want it untouched", got, err)
		}
	})
}

// jsonMsg is the msg of a JSON log line.
func jsonMsg(t *testing.T, line string) string {
	t.Helper()
	var l struct{ Msg string }
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		t.Fatalf("not a JSON log line: %s", line)
	}
	return l.Msg
}

func TestUserAdd(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	env := map[string]string{"DATABASE_URL": dsn}
	if r := tradingd(t, env, "", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	add := func(stdin string, args ...string) result {
		return tradingd(t, env, stdin, append([]string{"user", "add"}, args...)...)
	}
	if r := add("correct horse battery\n", "--username", "alice", "--role", "risk"); r.code != 0 || !strings.Contains(r.stdout, "alice") {
		t.Fatalf("user add: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		says  string
	}{
		{"duplicate", "another password\n", []string{"--username", "alice", "--role", "trader"}, 1, "taken"},
		{"bad role", "pw-for-bob\n", []string{"--username", "bob", "--role", "boss"}, 2, "role"},
		{"password over 72 bytes", strings.Repeat("x", 73) + "\n", []string{"--username", "bob", "--role", "trader"}, 1, "72"},
		{"no password", "", []string{"--username", "bob", "--role", "trader"}, 1, "password"},
		{"no username", "pw\n", []string{"--role", "trader"}, 2, "--username"},
		// A name no login could use is a bad command line like a bad role: exit 2 with the
		// flag named, before the password is read or the database touched.
		{"malformed username", "pw-for-bob\n", []string{"--username", "bob smith", "--role", "trader"}, 2, `--username "bob smith"`},
		// A second line was dropped without a word: the user may have meant it as part of
		// the password.
		{"two lines", "first-line\nsecond-line\n", []string{"--username", "bob", "--role", "trader"}, 1, "more than one line"},
		{"blank lines after it", "pw-for-carol\n\r\n\n", []string{"--username", "carol", "--role", "trader"}, 0, ""},
		{"unknown flag", "pw\n", []string{"--username", "bob", "--role", "trader", "--admin"}, 2, "admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := add(tt.stdin, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.says) {
				t.Errorf("exit %d, stderr %q; want %d and a message about %q", r.code, r.stderr, tt.code, tt.says)
			}
		})
	}
}

// process is a running `tradingd serve` whose JSON log lines the test reads.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  bytes.Buffer
	more chan struct{} // closed and replaced on every new line
	done chan struct{} // closed when stderr ends
	exit chan error
}

func startServe(t *testing.T, env map[string]string) *process {
	t.Helper()
	return startCmd(t, exec.Command(binary, "serve"), env)
}

// startCmd starts cmd, which runs tradingd serve (perhaps through a wrapper), with env.
func startCmd(t *testing.T, cmd *exec.Cmd, env map[string]string) *process {
	t.Helper()
	cmd.Env = baseEnv(env)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, more: make(chan struct{}), done: make(chan struct{}), exit: make(chan error, 1)}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]any
			_ = json.Unmarshal(sc.Bytes(), &line)
			p.mu.Lock()
			p.raw.Write(sc.Bytes())
			p.raw.WriteByte('\n')
			if line != nil {
				p.logs = append(p.logs, line)
			}
			close(p.more)
			p.more = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() { <-p.done; p.exit <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("tradingd's log:\n%s", p.log())
		}
	})
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

// waitLog waits for the first log line with msg and returns it; it fails the test when the
// process ends first. No clock: a hung process is caught by the test binary's timeout.
func (p *process) waitLog(msg string) map[string]any {
	p.t.Helper()
	return p.waitLogWith("msg", msg)
}

// waitLogWith waits for the first log line whose key holds value (see waitLog).
func (p *process) waitLogWith(key, value string) map[string]any {
	p.t.Helper()
	// find scans the lines not seen yet and, under the same lock, takes the channel that
	// the next line closes: a line arriving in between is not missed.
	find := func(seen *int) (map[string]any, chan struct{}) {
		p.mu.Lock()
		defer p.mu.Unlock()
		for ; *seen < len(p.logs); *seen++ {
			if p.logs[*seen][key] == value {
				return p.logs[*seen], nil
			}
		}
		return nil, p.more
	}
	for seen := 0; ; {
		line, more := find(&seen)
		if line != nil {
			return line
		}
		select {
		case <-more:
		case <-p.done:
			if line, _ := find(&seen); line != nil {
				return line
			}
			p.t.Fatalf("tradingd ended before logging a line with %s %q:\n%s", key, value, p.log())
		}
	}
}

// wait returns the exit code once the process has ended.
func (p *process) wait() int {
	p.t.Helper()
	err := <-p.exit
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("wait: %v", err)
	return -1
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func login(t *testing.T, apiAddr, username, password string) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	resp, err := http.Post("http://"+apiAddr+"/api/auth/login", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("login %s: %v", username, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestServe starts tradingd on a migrated database with demo users, a bootstrap admin and
// keys from a file, uses it, and stops it with SIGTERM while a login is in flight.
func TestServe(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	if r := tradingd(t, map[string]string{"DATABASE_URL": dsn}, "", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	if r := tradingd(t, map[string]string{"DATABASE_URL": dsn}, "alice-password\n", "user", "add", "--username", "alice", "--role", "trader"); r.code != 0 {
		t.Fatalf("user add: %d %s", r.code, r.stderr)
	}
	secret := "a-file-secret-of-at-least-32-bytes!!"
	keyFile := filepath.Join(t.TempDir(), "jwt-keys")
	if err := os.WriteFile(keyFile, []byte(keysFor(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, map[string]string{
		"DATABASE_URL":             dsn,
		"JWT_KEYS_FILE":            keyFile,
		"LISTEN_ADDR":              "127.0.0.1:0",
		"ADMIN_ADDR":               "127.0.0.1:0",
		"DEMO_USERS":               "true",
		"BOOTSTRAP_ADMIN_PASSWORD": "admin-bootstrap-pw",
		"SHUTDOWN_GRACE":           "2m",  // generous: the in-flight request must finish, not be cut
		"RATE_LIMIT_LOGIN":         "100", // seven logins from one address; limits are tested elsewhere
		"CACHE_SUMMARY_TTL":        "0s",  // the default lifetime, with a warning
		"TRUSTED_PROXIES":          "127.0.0.1/32",
	})
	serving := p.waitLog("serving")
	api, _ := serving["api_addr"].(string)
	admin, _ := serving["admin_addr"].(string)

	if code, body := get(t, "http://"+admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, "http://"+admin+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	// No GOGC in the environment: tradingd's own default, as the Go collector reports it.
	if code, body := get(t, "http://"+admin+"/metrics"); code != http.StatusOK || !strings.Contains(body, "\ngo_gc_gogc_percent 400\n") {
		t.Errorf("/metrics: %d, want go_gc_gogc_percent 400 in it", code)
	}
	// Header fields over the limit are answered by net/http before any handler: on both
	// ports as the API answers (the listeners are runtime/http's WrapListener).
	for _, addr := range []string{api, admin} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/api/orders", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get("Content-Type") != "application/problem+json" ||
			resp.Header.Get("Strict-Transport-Security") == "" || resp.Header.Get("X-Request-ID") == "" {
			t.Errorf("%s: header fields too large: %d %v %s, want 431 problem+json with the common headers", addr, resp.StatusCode, resp.Header, b)
		}
	}
	for _, u := range []struct{ name, password string }{
		{"trader1", "password123"}, {"trader2", "password456"}, {"risk1", "password789"},
		{"admin", "admin-bootstrap-pw"}, {"alice", "alice-password"},
	} {
		code, out := login(t, api, u.name, u.password)
		if code != http.StatusOK || out["access_token"] == nil || out["token_type"] != "Bearer" {
			t.Errorf("login %s: %d %v", u.name, code, out)
		}
	}
	if code, _ := login(t, api, "trader1", "wrong-password"); code != http.StatusUnauthorized {
		t.Errorf("login with a wrong password: %d, want 401", code)
	}
	// Behind a trusted proxy, the access log names the client the proxy saw, as the login
	// limit does.
	req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/auth/me", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("X-Request-ID", "behind-a-proxy")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	if line := p.waitLogWith("request_id", "behind-a-proxy"); line["client_ip"] != "203.0.113.9" {
		t.Errorf("access log line %v, want client_ip 203.0.113.9 (X-Forwarded-For from a trusted proxy)", line)
	}
	if !strings.Contains(p.log(), "DEMO_USERS") {
		t.Errorf("no warning about DEMO_USERS in the log")
	}
	if !strings.Contains(p.log(), `"setting":"CACHE_SUMMARY_TTL"`) {
		t.Errorf("no warning about CACHE_SUMMARY_TTL=0s in the log")
	}

	// A login in flight: headers sent with Expect: 100-continue; the server's "100 Continue"
	// proves the handler is running and reading the body. Then SIGTERM.
	conn, err := net.Dial("tcp", api)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"username":"trader1","password":"password123"}`
	fmt.Fprintf(conn, "POST /api/auth/login HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", api, len(body))
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, "100") {
		t.Fatalf("want 100 Continue, got %q, %v", status, err)
	}
	if blank, err := br.ReadString('\n'); err != nil || blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q, %v", blank, err)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLog("shutting down: draining in-flight requests")
	if code, body := get(t, "http://"+admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d %s, want 503", code, body)
	}
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatalf("finishing the in-flight request: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("in-flight request got no response: %v", err)
	}
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || out["access_token"] == nil {
		t.Errorf("in-flight login: %d %v; want 200 with a token", resp.StatusCode, out)
	}

	if code := p.wait(); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	p.waitLog("database pool closed; stopped")
	if _, err := net.Dial("tcp", api); err == nil {
		t.Errorf("the API port still accepts connections after exit")
	}
	logs := p.log()
	for _, s := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), "admin-bootstrap-pw", "password123", "alice-password"} {
		if strings.Contains(logs, s) {
			t.Errorf("the log contains the secret %q", s)
		}
	}
}

// TestServeWaitsForDatabase: with the database unreachable, serve stays up (healthz 200,
// readyz 503) and retries instead of crash-looping; SIGTERM then stops it with exit 0.
func TestServeWaitsForDatabase(t *testing.T) {
	// A port where nothing listens: connections are refused at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()

	p := startServe(t, map[string]string{
		"DATABASE_URL": "postgres://app:db-password-xyz@" + deadAddr + "/trading?sslmode=disable",
		"JWT_KEYS":     jwtKeys,
		"LISTEN_ADDR":  "127.0.0.1:0",
		"ADMIN_ADDR":   "127.0.0.1:0",
	})
	admin, _ := p.waitLog("admin listening")["addr"].(string)
	p.waitLog("database not reachable yet; /readyz answers 503 until it is")
	if code, body := get(t, "http://"+admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, "http://"+admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d %s, want 503", code, body)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	if strings.Contains(p.log(), "db-password-xyz") {
		t.Errorf("the log contains the database password")
	}
}

// TestGoMemoryLimitFromCgroup: started in a memory cgroup limited to 512 MiB without
// GOMEMLIMIT, tradingd's Go soft limit is 90% of it (automemlimit), as the Go collector's
// go_gc_gomemlimit_bytes shows; GOMEMLIMIT in the environment wins. It needs a memory cgroup
// it may create (root, cgroup v1's memory controller or v2 with memory delegated).
func TestGoMemoryLimitFromCgroup(t *testing.T) {
	const limit = 512 << 20
	cgroup, procs := newMemoryCgroup(t, limit)
	if cgroup == "" {
		t.Skip("no memory cgroup can be made here (needs root and a writable cgroup file system)")
	}
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"from the cgroup", nil, strconv.Itoa(limit * 9 / 10)},
		{"AUTOMEMLIMIT's share", map[string]string{"AUTOMEMLIMIT": "0.5"}, strconv.Itoa(limit / 2)},
		{"GOMEMLIMIT wins", map[string]string{"GOMEMLIMIT": "300MiB"}, strconv.Itoa(300 << 20)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": pgtest.NewMigratedDatabase(t), "JWT_KEYS": jwtKeys,
				"LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0"}
			for k, v := range tt.env {
				env[k] = v
			}
			// The shell joins the cgroup, then becomes tradingd, which reads its limit at start.
			p := startCmd(t, exec.Command("sh", "-c", `echo $$ > "$1" && exec "$0" serve`, binary, procs), env)
			admin, _ := p.waitLog("serving")["admin_addr"].(string)
			_, body := get(t, "http://"+admin+"/metrics")
			if !strings.Contains(body, "\ngo_gc_gomemlimit_bytes "+tt.want+"\n") && !strings.Contains(body, "\ngo_gc_gomemlimit_bytes "+floatText(tt.want)+"\n") {
				t.Errorf("go_gc_gomemlimit_bytes: %q, want %s", regexp.MustCompile(`(?m)^go_gc_gomemlimit_bytes .*$`).FindString(body), tt.want)
			}
		})
	}
}

// floatText is n as the Prometheus text format writes a large float (4.8318382e+08).
func floatText(n string) string {
	f, _ := strconv.ParseFloat(n, 64)
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// newMemoryCgroup makes a memory cgroup limited to limit bytes inside this process's own
// (so that a container's limit above it still applies, and is checked to be larger) and returns
// it and its cgroup.procs file, or "" when none can be made or joined; it is removed when the
// test ends.
func newMemoryCgroup(t *testing.T, limit int64) (dir, procs string) {
	t.Helper()
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", ""
	}
	name := fmt.Sprintf("tradingd-test-%d", os.Getpid())
	type hierarchy struct{ root, path, limitFile string }
	var candidates []hierarchy
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case slices.Contains(strings.Split(parts[1], ","), "memory"): // v1
			candidates = append(candidates, hierarchy{"/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes"})
		case parts[0] == "0" && parts[1] == "": // v2, when memory is delegated
			candidates = append(candidates, hierarchy{"/sys/fs/cgroup", parts[2], "memory.max"})
		}
	}
	for _, c := range candidates {
		parent := filepath.Join(c.root, c.path)
		if b, err := os.ReadFile(filepath.Join(parent, c.limitFile)); err != nil {
			continue
		} else if v := strings.TrimSpace(string(b)); v != "max" {
			if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 4*limit {
				continue // a container limit near ours would be the one that counts
			}
		}
		dir := filepath.Join(parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		remove := func() {
			// After the processes in it ended (cleanups run last first: theirs came later).
			for range 100 {
				if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("cgroup %s not removed", dir)
		}
		if os.WriteFile(filepath.Join(dir, c.limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644) != nil || !canJoin(filepath.Join(dir, "cgroup.procs")) {
			remove()
			continue
		}
		t.Cleanup(remove)
		return dir, filepath.Join(dir, "cgroup.procs")
	}
	return "", ""
}

// canJoin reports whether a process may be moved into the cgroup of procs: a short-lived one
// is, then ended.
func canJoin(procs string) bool {
	probe := exec.Command("sleep", "30")
	if probe.Start() != nil {
		return false
	}
	defer func() { _ = probe.Process.Kill(); _ = probe.Wait() }()
	return os.WriteFile(procs, []byte(strconv.Itoa(probe.Process.Pid)), 0o644) == nil
}
