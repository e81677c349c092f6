package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"log/slog"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The suite runs the real kube-apiserver and etcd (built by hack/envtest-assets.sh)
// with the operator's CRD, and the operator's manager in-process, exactly as
// cmd/manager wires it. There is no kubelet and no controller-manager: tests
// write the status of Jobs, StatefulSets and Deployments as those would, and
// there is no garbage collector, so deletion is checked through the owner
// references and retention policies the garbage collector acts on.

var (
	testEnv *envtest.Environment
	testCfg *rest.Config // the cluster admin's
	// operatorCfg is the manager's: a user bound to the generated ClusterRole and nothing
	// else, as the operator's service account is in a cluster.
	operatorCfg *rest.Config
	k8s         client.Client // direct, uncached: what a user with kubectl sees
	mgrMu       sync.Mutex
	mgrCancel   context.CancelFunc
	mgrDone     chan error
	currentMgr  manager.Manager
	// currentReconciler is the running manager's reconciler: a pass run through it uses the
	// manager's memory of what it applied, as a resync does.
	currentReconciler *TradingStackReconciler
	// operatorWrites records every write request the operator sends.
	operatorWrites writeLog
	// operatorLog holds every line the operator's logger writes (errors only, unless
	// TEST_OPERATOR_LOGS is set), client-go's reflectors included: they log through the
	// logger controller-runtime puts in their context.
	operatorLog logLines
)

// logLines is an io.Writer that keeps the lines written to it, for a test to read what the
// operator logged.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		l.lines = append(l.lines, line)
	}
	return len(b), nil
}

// mark is a position in the log, for since.
func (l *logLines) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// since returns the lines logged after mark that contain every one of words.
func (l *logLines) since(mark int, words ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
lines:
	for _, line := range l.lines[mark:] {
		for _, w := range words {
			if !strings.Contains(line, w) {
				continue lines
			}
		}
		out = append(out, line)
	}
	return out
}

// writeLog records write requests ("PATCH /apis/..."), so that a test can check what a
// pass sent, requests that changed nothing included.
type writeLog struct {
	mu   sync.Mutex
	reqs []string
}

func (w *writeLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.mu.Lock()
			w.reqs = append(w.reqs, req.Method+" "+req.URL.Path)
			w.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// mark is a position in the log, for since.
func (w *writeLog) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.reqs)
}

// since returns the writes into namespace ns after mark.
func (w *writeLog) since(mark int, ns string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.reqs[mark:] {
		if strings.Contains(r, "/namespaces/"+ns+"/") {
			out = append(out, r)
		}
	}
	return out
}

// settle waits until the operator has sent no write for namespace ns for a second: events
// go out asynchronously, after the pass that recorded them, and would be counted as writes of
// the passes a test runs next.
func (w *writeLog) settle(t *testing.T, ns string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := w.mark()
		time.Sleep(time.Second)
		if len(w.since(m, ns)) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the operator still writes in %s: %v", ns, w.since(m, ns))
		}
	}
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test`, or KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go test ./controllers/...")
		return 1
	}
	logf.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(io.MultiWriter(os.Stderr, &operatorLog), &slog.HandlerOptions{Level: logLevel()})))

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	// Every test's namespace stays with its Services (envtest runs no namespace controller to
	// delete them), and every stack has up to three: envtest's default /24 service range
	// (253 addresses) ran out with the suite's tests, and a stack's Service then failed with
	// "failed to allocate a serviceIP: range is full".
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() {
		stopManager()
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()
	testEnv, testCfg = env, cfg
	k8s, err = client.New(cfg, client.Options{Scheme: NewScheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	if operatorCfg, err = operatorUser(env); err != nil {
		fmt.Fprintln(os.Stderr, "operator user:", err)
		return 1
	}
	operatorCfg.Wrap(operatorWrites.wrap)
	if err := startManager(); err != nil {
		fmt.Fprintln(os.Stderr, "start manager:", err)
		return 1
	}
	return m.Run()
}

// operatorUser makes the user the manager runs as: bound to config/rbac/role.yaml, the
// ClusterRole generated from the reconciler's markers, and to nothing else. A verb the code
// uses but the markers forgot then fails the tests as it would fail in a cluster, instead of
// passing as the envtest admin.
func operatorUser(env *envtest.Environment) (*rest.Config, error) {
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		return nil, err
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(b, &role); err != nil {
		return nil, err
	}
	const user = "trading-operator-under-test"
	ctx := context.Background()
	if err := k8s.Create(ctx, &role); err != nil {
		return nil, err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := k8s.Create(ctx, binding); err != nil {
		return nil, err
	}
	u, err := env.AddUser(envtest.User{Name: user}, testCfg)
	if err != nil {
		return nil, err
	}
	return u.Config(), nil
}

// logLevel keeps the operator's log to errors (a failing reconcile still
// shows); TEST_OPERATOR_LOGS=1 shows everything.
func logLevel() slog.Level {
	if os.Getenv("TEST_OPERATOR_LOGS") != "" {
		return slog.LevelDebug
	}
	return slog.LevelError
}

// startManager starts the operator's manager as cmd/manager does (same scheme,
// cache limits and controller setup), watching the given namespaces (none:
// all, as with an empty WATCH_NAMESPACE).
func startManager(watchNamespaces ...string) error {
	mgrMu.Lock()
	defer mgrMu.Unlock()
	mgr, err := ctrl.NewManager(operatorCfg, manager.Options{
		Scheme:                 NewScheme(),
		Cache:                  CacheOptions(watchNamespaces),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// A restarted manager registers the same controller name again.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	r := NewTradingStackReconciler(mgr, 3)
	r.WatchNamespaces = watchNamespaces
	if err := r.SetupWithManager(mgr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		cancel()
		return fmt.Errorf("cache did not sync")
	}
	mgrCancel, mgrDone, currentMgr, currentReconciler = cancel, done, mgr, r
	return nil
}

func stopManager() {
	mgrMu.Lock()
	defer mgrMu.Unlock()
	if mgrCancel == nil {
		return
	}
	mgrCancel()
	<-mgrDone
	mgrCancel, mgrDone, currentMgr, currentReconciler = nil, nil, nil, nil
}

// newNamespace gives each test a namespace of its own.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + rand.String(8)}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

// eventually polls cond until it returns nil. The bound only keeps a broken
// test from hanging; no test asserts how fast the operator is.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// prometheusOperatorCRDDir locates the real prometheus-operator CRDs in the Go
// module cache (the module proxy serves them), without copying them into the
// repository.
func prometheusOperatorCRDDir() (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/prometheus-operator/prometheus-operator@v0.85.0").Output()
	if err != nil {
		return "", fmt.Errorf("go mod download prometheus-operator: %w", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("go mod download prometheus-operator: no Dir in %s", out)
	}
	return filepath.Join(mod.Dir, "example", "prometheus-operator-crd"), nil
}
