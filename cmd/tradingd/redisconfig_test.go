package main

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

// TestStacksShareOneRedis runs two unrelated deployments (each its own database) on one Redis
// database, as two TradingStacks on one external Redis, each with its REDIS_KEY_PREFIX: the
// login limit of one client IP is counted per deployment, and every key and the invalidation
// channel of each carries its prefix.
func TestStacksShareOneRedis(t *testing.T) {
	redisURL := testRedis(t)
	env := func(prefix string) map[string]string {
		return map[string]string{
			"DATABASE_URL":     pgtest.NewMigratedDatabase(t),
			"JWT_KEYS":         jwtKeys,
			"REDIS_URL":        redisURL,
			"REDIS_KEY_PREFIX": prefix,
			"LISTEN_ADDR":      "127.0.0.1:0",
			"ADMIN_ADDR":       "127.0.0.1:0",
			"DEMO_USERS":       "true",
			"RATE_LIMIT_LOGIN": "2",
		}
	}
	a := startReplica(t, env("stack-a:"))
	b := startReplica(t, env("stack-b:"))

	trader := token(t, a.api[len("http://"):], "trader1", "password123")
	token(t, a.api[len("http://"):], "trader2", "password456")
	if code, _, body := call(t, "POST", a.api+"/api/auth/login", "", `{"username":"trader1","password":"password123"}`); code != http.StatusTooManyRequests {
		t.Fatalf("third login on A with RATE_LIMIT_LOGIN=2: %d %s, want 429", code, body)
	}
	// B's limit is its own: the same client IP logs in there.
	traderB := token(t, b.api[len("http://"):], "trader1", "password123")

	// Cached views and an invalidation on each, so that every kind of key exists.
	for _, r := range []struct {
		api, tok string
	}{{a.api, trader}, {b.api, traderB}} {
		if code, _, body := call(t, "GET", r.api+"/api/positions", r.tok, ""); code != 200 {
			t.Fatalf("positions: %d %s", code, body)
		}
		if code, _, body := call(t, "POST", r.api+"/api/orders", r.tok, `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`); code != http.StatusCreated {
			t.Fatalf("submit: %d %s", code, body)
		}
	}

	opts, err := goredis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, k := range keys {
		switch {
		case k == "trading-test-claim": // testRedis's
		case strings.HasPrefix(k, "stack-a:"):
			seen["stack-a:"]++
		case strings.HasPrefix(k, "stack-b:"):
			seen["stack-b:"]++
		default:
			t.Errorf("key %q carries neither deployment's prefix", k)
		}
	}
	if seen["stack-a:"] == 0 || seen["stack-b:"] == 0 {
		t.Errorf("keys per prefix %v in %v, want some of each", seen, keys)
	}
	channels, err := rdb.PubSubChannels(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"stack-a:", "stack-b:"} {
		found := false
		for _, c := range channels {
			found = found || strings.HasPrefix(c, prefix+"cache-invalidate@db")
		}
		if !found {
			t.Errorf("no invalidation channel of %s among %v", prefix, channels)
		}
	}
}

// TestRedisPasswordWithURLCharacters: a password with characters that a URL would need
// percent-encoded ("/", "?", "#", "%", "@", ":"), as generated passwords often hold, works
// through REDIS_PASSWORD beside a REDIS_URL without one; a wrong one is named in /readyz.
func TestRedisPasswordWithURLCharacters(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is needed for this test (hack/services.sh installs it): %v", err)
	}
	const password = "p/w?x#y%zz@h:1"
	port := freePort(t)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", password)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + port, Password: password})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer")
		}
		time.Sleep(20 * time.Millisecond)
	}

	r := startReplica(t, map[string]string{
		"DATABASE_URL":   pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":       jwtKeys,
		"REDIS_URL":      "redis://127.0.0.1:" + port + "/0",
		"REDIS_PASSWORD": password,
		"LISTEN_ADDR":    "127.0.0.1:0",
		"ADMIN_ADDR":     "127.0.0.1:0",
	})
	if code, body := get(t, r.admin+"/readyz"); code != 200 || !strings.Contains(body, `"redis":"ok"`) {
		t.Fatalf("/readyz with REDIS_PASSWORD: %d %s, want redis ok", code, body)
	}
	if strings.Contains(r.proc.log(), password) {
		t.Errorf("the Redis password is in the log")
	}

	// A wrong password: degraded, and /readyz says why in Redis's words, not "not answering".
	wrong := startReplica(t, map[string]string{
		"DATABASE_URL":   pgtest.NewMigratedDatabase(t),
		"JWT_KEYS":       jwtKeys,
		"REDIS_URL":      "redis://127.0.0.1:" + port + "/0",
		"REDIS_PASSWORD": "not-" + password,
		"LISTEN_ADDR":    "127.0.0.1:0",
		"ADMIN_ADDR":     "127.0.0.1:0",
	})
	if code, body := get(t, wrong.admin+"/readyz"); code != 200 || !strings.Contains(body, `"redis":"degraded: refused: WRONGPASS`) {
		t.Fatalf("/readyz with a wrong REDIS_PASSWORD: %d %s, want 200 and degraded: refused: WRONGPASS...", code, body)
	}
}
