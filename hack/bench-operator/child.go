package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/findmy/trading-operator/controllers"
)

// The operator runs in a process of its own, as in a cluster, so that its memory is its
// own (issue #4's aim is the manager's RSS): this binary started again with childEnv set
// runs only the manager. It counts its requests to the API server by kind (writeCounter)
// and serves the counts, with controller-runtime's own metrics, on its metrics endpoint,
// which the bench scrapes.
const (
	childEnv       = "BENCH_OPERATOR_MANAGER"
	childKubeEnv   = "BENCH_OPERATOR_KUBECONFIG"
	childAddrEnv   = "BENCH_OPERATOR_METRICS_ADDR"
	childConcEnv   = "BENCH_OPERATOR_CONCURRENCY"
	childResyncEnv = "BENCH_OPERATOR_RESYNC"
)

// runChild is the manager process: it runs until SIGTERM.
func runChild() error {
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	// Loaded as cmd/manager loads its configuration (ctrl.GetConfig: KUBECONFIG here, the
	// service account in a pod), with its client-side settings: no client rate limit
	// (QPS -1), the API server's priority and fairness decides.
	if err := os.Setenv("KUBECONFIG", os.Getenv(childKubeEnv)); err != nil {
		return err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	concurrency, err := strconv.Atoi(os.Getenv(childConcEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", childConcEnv, err)
	}
	resync, err := time.ParseDuration(os.Getenv(childResyncEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", childResyncEnv, err)
	}

	var writes writeCounter
	cfg.Wrap(writes.wrap)
	for kind, c := range map[string]func() int64{
		"apply": writes.applies.Load, "create": writes.creates.Load, "delete": writes.deletes.Load,
		"status": writes.status.Load, "event": writes.events.Load, "other": writes.other.Load, "get": writes.gets.Load,
	} {
		metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "bench_operator_requests_total", Help: "The manager's requests to the API server, by kind.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 { return float64(c()) }))
	}

	// A resync period short enough to see one during the rest window: a converged fleet
	// must write nothing when every object is redelivered.
	cacheOpts := controllers.CacheOptions(nil)
	cacheOpts.SyncPeriod = &resync
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme: controllers.NewScheme(),
		Cache:  cacheOpts,
		Metrics: metricsserver.Options{BindAddress: os.Getenv(childAddrEnv), ExtraHandlers: map[string]http.Handler{
			"/debug/pprof/heap": pprof.Handler("heap"), "/debug/pprof/allocs": pprof.Handler("allocs"),
		}},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	if err := controllers.NewTradingStackReconciler(mgr, concurrency).SetupWithManager(mgr); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// managerProcess is a running manager child.
type managerProcess struct {
	cmd     *exec.Cmd
	metrics string // URL of its metrics endpoint
	exited  chan error
	exitErr error // set by alive when it saw the process end
	stopped bool
}

// startManager starts a manager process with the given kubeconfig and waits until its
// metrics endpoint answers.
func startManager(ctx context.Context, kubeconfigPath string, concurrency int, resync time.Duration) (*managerProcess, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), childEnv+"=1", childKubeEnv+"="+kubeconfigPath, childAddrEnv+"="+addr,
		childConcEnv+"="+strconv.Itoa(concurrency), childResyncEnv+"="+resync.String())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group, so that the terminal's Ctrl-C reaches the bench alone, which
	// stops the manager in order (the deferred stop) before the API server; and a bench that
	// dies without that (SIGKILL) takes the manager with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &managerProcess{cmd: cmd, metrics: "http://" + addr + "/metrics", exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	for deadline := time.Now().Add(time.Minute); ; {
		if _, err := p.scrape(ctx); err == nil {
			return p, nil
		}
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("manager process exited: %v", err)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("manager process: no metrics endpoint after a minute")
		}
	}
}

// stop ends the process (SIGTERM, as a Deployment's rollout would) and waits for it; once.
func (p *managerProcess) stop() {
	if p == nil || p.stopped {
		return
	}
	p.stopped = true
	if p.exitErr != nil {
		return // exited by itself
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// alive returns an error when the bench was interrupted or the manager process has exited,
// so that a crashed manager ends the run at once instead of at a timeout.
func (p *managerProcess) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case err := <-p.exited:
		p.exitErr = fmt.Errorf("manager process exited: %v", err)
	default:
	}
	return p.exitErr
}

// counts is what the bench reads from a manager process.
type counts struct {
	applies, creates, deletes, status, events, other, gets float64
	reconciles                                             float64
	heapBytes                                              float64
}

// writes are the mutating requests other than events.
func (c counts) writes() float64 { return c.applies + c.creates + c.deletes + c.status + c.other }

func (p *managerProcess) scrape(ctx context.Context) (counts, error) {
	var c counts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.metrics, nil)
	if err != nil {
		return c, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return c, err
	}
	byKind := map[string]*float64{"apply": &c.applies, "create": &c.creates, "delete": &c.deletes,
		"status": &c.status, "event": &c.events, "other": &c.other, "get": &c.gets}
	for _, m := range families["bench_operator_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if f := byKind[l.GetValue()]; l.GetName() == "kind" && f != nil {
				*f = m.GetCounter().GetValue()
			}
		}
	}
	for _, m := range families["controller_runtime_reconcile_total"].GetMetric() {
		c.reconciles += m.GetCounter().GetValue()
	}
	for _, m := range families["go_memstats_heap_alloc_bytes"].GetMetric() {
		c.heapBytes = m.GetGauge().GetValue()
	}
	return c, nil
}

// memory reads the process's resident set and its peak (VmRSS, VmHWM) in kB.
func (p *managerProcess) memory() (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		field := func(name string) (int64, bool) {
			v, ok := strings.CutPrefix(line, name+":")
			if !ok {
				return 0, false
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n, true
		}
		if n, ok := field("VmRSS"); ok {
			rss = n
		}
		if n, ok := field("VmHWM"); ok {
			hwm = n
		}
	}
	return rss, hwm
}
