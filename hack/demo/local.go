package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// dsnHost is the host:port of a postgres:// DSN, for messages that must not carry a password.
func dsnHost(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return u.Host
}

// localDatabase is a fresh database on the server of the admin DSN (hack/services.sh's
// DATABASE_URL), since the in-cluster DSN names a host that only exists inside a cluster.
type localDatabase struct {
	name, dsn string
	drop      func() error
}

func createDatabase(ctx context.Context, admin string) (*localDatabase, error) {
	dsn, drop, err := pgtest.Create(ctx, admin, "tstack_demo_")
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(dsn)
	if err != nil {
		_ = drop()
		return nil, err
	}
	return &localDatabase{name: strings.TrimPrefix(u.Path, "/"), dsn: dsn, drop: drop}, nil
}

// localRedis returns a REDIS_URL on a logical database (1-15) of the Redis at base, claimed
// and emptied (redistest.ClaimDatabase): tradingd runs here without a key prefix, and other
// processes (tests running at the same time) share the server; the login buckets of 127.0.0.1
// in particular. release empties and frees it.
func localRedis(ctx context.Context, base string) (redisURL string, release func(), err error) {
	return redistest.ClaimDatabase(ctx, base)
}

// processEnv is the environment of a local tradingd: PATH and HOME from ours (nothing else
// leaks in, e.g. hack/services.sh's admin DATABASE_URL), then the resolved settings.
func processEnv(settings map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+settings[k])
	}
	return env
}

// runMigrate runs `tradingd migrate` to completion, its log into logPath.
func runMigrate(ctx context.Context, bin string, settings map[string]string, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, bin, "migrate")
	cmd.Env = processEnv(settings)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		raw, _ := os.ReadFile(logPath)
		return fmt.Errorf("tradingd migrate: %w\n%s", err, tail(string(raw), 10))
	}
	return nil
}

// server is a running `tradingd serve`.
type server struct {
	cmd         *exec.Cmd
	done        chan error
	api, admin  string // base URLs
	logPath     string
	stopOnce    sync.Once
	stopMessage error
}

// startServe starts `tradingd serve`, its log (JSON lines) into logPath, and waits for its
// "serving" line, which carries the addresses it listens on.
func startServe(ctx context.Context, bin string, settings map[string]string, logPath string) (*server, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	cmd := exec.Command(bin, "serve")
	cmd.Env = processEnv(settings)
	cmd.Stdout = f
	cmd.Stderr = io.MultiWriter(f, pw)
	// Its own process group: a Ctrl-C in the terminal reaches the demo, which then stops
	// tradingd with SIGTERM (a graceful drain) in its cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start tradingd serve: %w", err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1), logPath: logPath}
	go func() {
		err := cmd.Wait()
		pw.Close()
		f.Close()
		s.done <- err
	}()

	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			var line struct {
				Msg       string `json:"msg"`
				APIAddr   string `json:"api_addr"`
				AdminAddr string `json:"admin_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				addrs <- [2]string{line.APIAddr, line.AdminAddr}
			}
		}
		io.Copy(io.Discard, pr) //nolint:errcheck
	}()

	select {
	case a := <-addrs:
		s.api, s.admin = "http://"+a[0], "http://"+a[1]
		return s, nil
	case err := <-s.done:
		raw, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("tradingd serve exited before serving (%v):\n%s", err, tail(string(raw), 10))
	case <-time.After(2 * time.Minute):
		s.stop()
		return nil, errors.New("tradingd serve did not start serving within 2 minutes; log: " + logPath)
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM (tradingd drains, then exits 0) and kills it after a grace period.
func (s *server) stop() error {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-s.done:
			s.stopMessage = err
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			s.stopMessage = errors.New("tradingd did not stop within 30s of SIGTERM: killed")
		}
	})
	return s.stopMessage
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
