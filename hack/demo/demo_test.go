package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/findmy/trading-operator/hack/internal/repo"
)

// TestDemoOnce runs `make demo`'s program non-interactively (-once) in this process, against
// the real control plane (KUBEBUILDER_ASSETS), PostgreSQL and Redis (hack/services.sh), with a
// tradingd built here, and checks what a person watching it would read, then that it left
// nothing behind.
func TestDemoOnce(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test`, or KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) hack/services.sh go test ./hack/demo/")
	}
	if os.Getenv("DATABASE_URL") == "" || os.Getenv("REDIS_URL") == "" {
		t.Fatal("DATABASE_URL and REDIS_URL are not set: run through hack/services.sh (make test does)")
	}
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))

	root, err := repo.Root()
	if err != nil {
		t.Fatal(err)
	}
	// make test does not run make build. Not -race: bcrypt in a race-instrumented binary makes
	// every login slow on a small machine.
	bin := filepath.Join(t.TempDir(), "tradingd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tradingd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build tradingd: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err = run(ctx, &out, options{Once: true, Root: root, Tradingd: bin, Namespace: "default"})
	printed := out.String()
	t.Logf("the demo printed:\n%s", printed)
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	for _, want := range []struct{ what, re string }{
		{"the CRD installed", `installed CRD tradingstacks\.trading\.findmy\.io`},
		{"a condition line before Ready", `\d\d:\d\d:\d\d\.\d{3}\s+DatabaseReady\s+True\s+\S+`},
		{"the Ready condition line", `\d\d:\d\d:\d\d\.\d{3}\s+Ready\s+True\s+AllComponentsReady`},
		{"the kubelet stand-in for postgres", `StatefulSet demo-postgres has 1/1 pods ready, as a kubelet would`},
		{"the kubelet stand-in for redis", `Deployment demo-redis has 1/1 pods ready, as a kubelet would`},
		{"the kubelet stand-in for the migration", `Job demo-migrate-[0-9a-f]{10} succeeded`},
		{"the kubelet stand-in for the api", `Deployment demo-api has 2/2 pods ready, as a kubelet would`},
		{"the ConfigMap read back", `ConfigMap demo-runtime \(envFrom\): \d+ settings`},
		{"the JWT keys read back", `Secret demo-jwt key "keys" -> JWT_KEYS`},
		{"the admin password read back", `Secret demo-admin key "password" -> BOOTSTRAP_ADMIN_PASSWORD \(\d+ characters, not shown\)`},
		{"tradingd serving", `serve: API http://127\.0\.0\.1:\d+, admin http://127\.0\.0\.1:\d+`},
		{"the login", `POST /api/auth/login trader1 -> 200, access token \S+`},
		{"the order", `POST /api/orders \{BTC/USD buy 0\.5 @ 60000\} -> 201, order [0-9a-f-]{36} status pending`},
		{"four eyes", `approve as trader1 -> 403`},
		{"the approval", `approve as risk1 -> 200, status approved, trade [0-9a-f-]{36}: 0\.5\d* BTC/USD @ 60000`},
		{"the position", `position BTC/USD quantity 0\.5\d* avg entry 60000`},
		{"the summary", `trades_today\s+1\n`},
		{"the 429", `-> 429 Too Many Requests, Retry-After: \d+`},
		{"requests in the metrics", `api_requests_total\{endpoint="/api/orders",method="POST",status="429"\} 1`},
		{"the trade in the metrics", `trades_total\{side="buy",symbol="BTC/USD"\} 1`},
		{"the cache in the metrics", `cache_hits_total\{cache_level="l1",key_pattern="positions"\} \d+`},
		{"the rejection in the metrics", `rate_limit_rejections_total\{class="trading"\} 1`},
		{"tradingd stopped", `stopped tradingd`},
		{"the control plane stopped", `stopped kube-apiserver and etcd`},
	} {
		if !regexp.MustCompile(want.re).MatchString(printed) {
			t.Errorf("%s: no line matches %s", want.what, want.re)
		}
	}
	if strings.Contains(printed, "everything keeps running") {
		t.Error("-once printed the interactive ending")
	}

	// Nothing left behind: the temporary folder (kubeconfig, logs) and the database.
	if m := regexp.MustCompile(`removed (\S+)`).FindStringSubmatch(printed); m == nil {
		t.Error("no line says the temporary folder was removed")
	} else if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s still exists (stat: %v)", m[1], err)
	}
	m := regexp.MustCompile(`dropped database (tstack_demo_[0-9a-f]+)`).FindStringSubmatch(printed)
	if m == nil {
		t.Fatal("no line says the database was dropped")
	}
	conn, err := pgx.Connect(context.Background(), os.Getenv("DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname = $1", m[1]).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s still exists", m[1])
	}
}
