package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
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
	for _, r := range []replica{a, b} {
		waitReadyz(t, r.admin, `"redis":"ok"`, "redis ok") // shared limits, not the per-process fallback
	}

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
		case k == redistest.ClaimKey: // testRedis's
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
	waitReadyz(t, r.admin, `"redis":"ok"`, "/readyz with REDIS_PASSWORD: redis ok")
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
	waitReadyz(t, wrong.admin, `"redis":"degraded: refused: WRONGPASS`, "/readyz with a wrong REDIS_PASSWORD: degraded: refused: WRONGPASS...")
}

// TestRedisOverTLS: a Redis that speaks only TLS, its certificate signed by a private CA:
// rediss:// with REDIS_CA_FILE works; the same without the CA is refused by the certificate
// check (degraded, never an unverified connection).
func TestRedisOverTLS(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is needed for this test (hack/services.sh installs it): %v", err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCA(t, dir)
	port := freePort(t)
	cmd := exec.Command("redis-server", "--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	waitFor(t, func() bool {
		conn, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			conn.Close()
		}
		return err == nil
	}, "redis-server listening with TLS")

	env := func(extra map[string]string) map[string]string {
		e := map[string]string{
			"DATABASE_URL": pgtest.NewMigratedDatabase(t),
			"JWT_KEYS":     jwtKeys,
			"REDIS_URL":    "rediss://127.0.0.1:" + port + "/0",
			"LISTEN_ADDR":  "127.0.0.1:0",
			"ADMIN_ADDR":   "127.0.0.1:0",
		}
		for k, v := range extra {
			e[k] = v
		}
		return e
	}
	r := startReplica(t, env(map[string]string{"REDIS_CA_FILE": caFile}))
	waitReadyz(t, r.admin, `"redis":"ok"`, "/readyz over TLS with REDIS_CA_FILE: redis ok")
	unverified := startReplica(t, env(nil))
	waitReadyz(t, unverified.admin, `"redis":"degraded: not answering: tls: failed to verify certificate`, "/readyz over TLS without the CA: degraded, naming the certificate")
}

// writeTestCA writes a CA and a server certificate for 127.0.0.1 that it signed, as PEM.
func writeTestCA(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("ca.crt", "CERTIFICATE", caDER), write("tls.crt", "CERTIFICATE", der), write("tls.key", "PRIVATE KEY", keyDER)
}

// REDIS_CA_FILE goes with a TLS URL whatever the scheme's case (go-redis, like url.Parse,
// reads REDISS:// as rediss://), and never with a plain one.
func TestReadCAFileScheme(t *testing.T) {
	ca, _, _ := writeTestCA(t, t.TempDir())
	for url, ok := range map[string]bool{
		"rediss://cache:6380/0": true, "REDISS://cache:6380/0": true,
		"redis://cache:6379/0": false, "unix:///run/redis.sock": false,
	} {
		if _, err := readCAFile(ca, url); (err == nil) != ok {
			t.Errorf("readCAFile with %s: %v, want ok %v", url, err, ok)
		}
	}
}

// waitReadyz polls /readyz until it answers 200 with want in its body. On a loaded machine the
// first ping can time out ("not answering: context deadline exceeded") before the pinger, every
// 100 ms, sees what Redis really says; the test waits for that, and fails with the last body.
func waitReadyz(t *testing.T, admin, want, what string) {
	t.Helper()
	var code int
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if code, body = get(t, admin+"/readyz"); code == 200 && strings.Contains(body, want) {
			return
		}
	}
	t.Fatalf("%s: gave up; last /readyz %d %s", what, code, body)
}
