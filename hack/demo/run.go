package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/controllers"
	"github.com/findmy/trading-operator/hack/internal/repo"
)

// Settings the demo changes from what the operator generated, and why.
const (
	// Low, so that the short session shows a 429.
	demoTradingLimit = "3"
	// Off: the login bucket is per client IP, and every local process is 127.0.0.1.
	demoLoginLimit = "0"
)

// run is the whole demo; out receives what a person reads. It returns after the scripted
// session with opts.Once, otherwise when ctx ends (Ctrl-C), having stopped and removed
// everything it started and created in either case.
func run(ctx context.Context, out io.Writer, opts options) (err error) {
	p := printer{w: out}
	start := time.Now()
	clock := func() string { return time.Now().UTC().Format("15:04:05.000") }

	if opts.Root == "" {
		if opts.Root, err = repo.Root(); err != nil {
			return err
		}
	}
	if opts.Tradingd == "" {
		opts.Tradingd = filepath.Join(opts.Root, "bin", "tradingd")
	}
	if opts.Sample == "" {
		opts.Sample = filepath.Join(opts.Root, "config", "samples", "trading_v1alpha1_tradingstack.yaml")
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make demo` (it sets it from hack/envtest-assets.sh)")
	}
	if _, err := os.Stat(opts.Tradingd); err != nil {
		return fmt.Errorf("%s: %w (run `make build`, or `make demo`)", opts.Tradingd, err)
	}
	adminDSN := os.Getenv("DATABASE_URL")
	redisBase := os.Getenv("REDIS_URL")
	if adminDSN == "" || redisBase == "" {
		return errors.New("DATABASE_URL and REDIS_URL must be set: run through hack/services.sh (`make demo` does)")
	}
	sample, err := readSample(opts.Sample, opts.Namespace)
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "trading-demo-")
	if err != nil {
		return err
	}
	// Cleanups run in reverse order of registration, each saying what it stops.
	var cleanups []func()
	defer func() {
		if len(cleanups) > 0 {
			p.step("cleaning up")
		}
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	cleanups = append(cleanups, func() {
		if err := os.RemoveAll(tmp); err != nil {
			p.line("remove %s: %v", tmp, err)
			return
		}
		p.line("removed %s", tmp)
	})

	// --- the control plane ---
	p.step("starting the control plane (kube-apiserver and etcd from %s) on loopback", assets)
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(opts.Root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start the control plane: %w", err)
	}
	cleanups = append(cleanups, func() {
		if err := env.Stop(); err != nil {
			p.line("stop the control plane: %v", err)
			return
		}
		p.line("stopped kube-apiserver and etcd (and removed their data)")
	})
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		return err
	}
	p.line("kube-apiserver at %s; kubeconfig %s", cfg.Host, kubeconfig)
	for _, crd := range env.CRDs {
		p.line("installed CRD %s", crd.Name)
	}

	scheme := controllers.NewScheme()
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}

	// --- the operator, wired as cmd/manager wires it ---
	p.step("starting the operator (the manager of cmd/manager, in this process)")
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 scheme,
		Cache:                  controllers.CacheOptions(nil),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return err
	}
	if err := controllers.NewTradingStackReconciler(mgr, 2).SetupWithManager(mgr); err != nil {
		return err
	}
	mgrCtx, stopMgr := context.WithCancel(context.Background())
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(mgrCtx) }()
	cleanups = append(cleanups, func() {
		stopMgr()
		if err := <-mgrDone; err != nil {
			p.line("operator stopped: %v", err)
			return
		}
		p.line("stopped the operator")
	})
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return fmt.Errorf("the operator's cache did not sync: %w", context.Cause(ctx))
	}
	p.line("operator running")

	// --- the sample ---
	rel, _ := filepath.Rel(opts.Root, opts.Sample)
	p.step("applying %s (TradingStack %s/%s)", rel, sample.Namespace, sample.Name)
	if err := k8s.Create(ctx, sample); err != nil {
		return fmt.Errorf("create TradingStack: %w", err)
	}
	p.line("created; its conditions as they change, and what the demo does in a kubelet's place:")
	if err := waitReady(ctx, k8s, sample, p, clock); err != nil {
		return err
	}

	// --- the runtime, locally ---
	p.step("reading the runtime's configuration back from the API server, as the Deployment %s-api's pods would get it", sample.Name)
	dep := &appsv1.Deployment{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: sample.Namespace, Name: sample.Name + "-api"}, dep); err != nil {
		return err
	}
	ctr := dep.Spec.Template.Spec.Containers[0]
	p.line("Deployment %s: container %s runs %s (image %s)", dep.Name, ctr.Name, strings.Join(ctr.Command, " "), ctr.Image)
	settings, err := resolveEnv(ctx, k8s, sample.Namespace, ctr, p)
	if err != nil {
		return err
	}

	p.step("starting tradingd locally as the Deployment would, with these settings changed")
	db, err := createDatabase(ctx, adminDSN)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := db.drop(); err != nil {
			p.line("drop database %s: %v", db.name, err)
			return
		}
		p.line("dropped database %s", db.name)
	})
	redisURL, releaseRedis, err := localRedis(ctx, redisBase)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, releaseRedis)
	p.line("DATABASE_URL       a fresh database %s on %s (the in-cluster %s is not reachable from here)", db.name, dsnHost(db.dsn), dsnHost(settings["DATABASE_URL"]))
	p.line("REDIS_URL          %s, emptied (instead of the in-cluster %s)", redacted(redisURL), redacted(settings["REDIS_URL"]))
	p.line("LISTEN_ADDR        127.0.0.1:0 and ADMIN_ADDR 127.0.0.1:0 (free loopback ports)")
	p.line("DEMO_USERS         true (trader1, trader2, risk1)")
	p.line("RATE_LIMIT_TRADING %s per minute (was %s), so that the session shows a 429", demoTradingLimit, settings["RATE_LIMIT_TRADING"])
	p.line("RATE_LIMIT_LOGIN   %s, off (was %s): every local client is 127.0.0.1", demoLoginLimit, settings["RATE_LIMIT_LOGIN"])
	settings["DATABASE_URL"] = db.dsn
	settings["REDIS_URL"] = redisURL
	settings["LISTEN_ADDR"] = "127.0.0.1:0"
	settings["ADMIN_ADDR"] = "127.0.0.1:0"
	settings["DEMO_USERS"] = "true"
	settings["RATE_LIMIT_TRADING"] = demoTradingLimit
	settings["RATE_LIMIT_LOGIN"] = demoLoginLimit

	if err := runMigrate(ctx, opts.Tradingd, settings, filepath.Join(tmp, "tradingd-migrate.log")); err != nil {
		return err
	}
	p.line("%s migrate: done", opts.Tradingd)
	srv, err := startServe(ctx, opts.Tradingd, settings, filepath.Join(tmp, "tradingd.log"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := srv.stop(); err != nil {
			p.line("tradingd: %v", err)
			return
		}
		p.line("stopped tradingd (SIGTERM, drained)")
	})
	p.line("%s serve: API %s, admin %s", opts.Tradingd, srv.api, srv.admin)

	if err := session(ctx, p, srv); err != nil {
		return err
	}
	p.step("scripted session done in %s", time.Since(start).Round(time.Second))
	if opts.Once {
		return nil
	}

	kubectl := filepath.Join(opts.Root, "bin", "k8s", "1.37.2", "kubectl")
	if rel, err := filepath.Rel(mustGetwd(), kubectl); err == nil && !strings.HasPrefix(rel, "..") {
		kubectl = rel
	}
	p.step("everything keeps running; try it from another terminal")
	p.line("API        %s   (e.g. curl -s %s/openapi.json | head -c 300)", srv.api, srv.api)
	p.line("admin      %s   (e.g. curl -s %s/metrics | grep ^trades_total)", srv.admin, srv.admin)
	p.line("kubeconfig %s", kubeconfig)
	p.line("           %s --kubeconfig %s get tstack -n %s", kubectl, kubeconfig, sample.Namespace)
	p.line("           %s --kubeconfig %s describe tstack %s -n %s", kubectl, kubeconfig, sample.Name, sample.Namespace)
	p.line("           %s --kubeconfig %s get secret %s-admin -n %s -o jsonpath='{.data.password}' | base64 -d   # the bootstrap admin's password", kubectl, kubeconfig, sample.Name, sample.Namespace)
	p.line("log in     curl -s %s/api/auth/login -H 'Content-Type: application/json' -d '{\"username\":\"trader1\",\"password\":\"password123\"}'", srv.api)
	p.line("tradingd's log: %s", srv.logPath)
	p.line("Ctrl-C stops tradingd, the operator and the control plane, drops the database and removes %s.", tmp)
	select {
	case <-ctx.Done():
	case err := <-srv.done:
		// Reported here; stop() sees the process already gone.
		srv.done <- err
		return fmt.Errorf("tradingd exited on its own (%v); log: %s", err, srv.logPath)
	}
	return nil
}

// redacted is a URL with any password masked, for printing.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func mustGetwd() string {
	wd, _ := os.Getwd()
	return wd
}

// waitReady prints the stack's conditions as they change and plays kubelet until the stack
// is Ready.
func waitReady(ctx context.Context, k8s client.Client, stack *tradingv1alpha1.TradingStack, p printer, clock func() string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	k := &kubelet{c: k8s, stack: stack, p: p, clock: clock}
	var w conditionWatcher
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		s := &tradingv1alpha1.TradingStack{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(stack), s); err != nil {
			return err
		}
		w.print(p, clock(), s)
		ready := meta.FindStatusCondition(s.Status.Conditions, tradingv1alpha1.ConditionReady)
		if ready != nil && ready.Status == metav1.ConditionTrue && ready.ObservedGeneration == s.Generation {
			p.line("TradingStack %s/%s is Ready (phase %s, schema %s)", s.Namespace, s.Name, s.Status.Phase, s.Status.SchemaVersion)
			return nil
		}
		if err := k.tick(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the TradingStack to become Ready: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
}
