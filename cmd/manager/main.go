// Command manager runs the TradingStack operator: one controller that turns a
// TradingStack into the whole trading service (database, cache, migrations,
// runtime, policies and monitoring).
package main

import (
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/controllers"
)

func main() {
	var (
		metricsAddr    string
		metricsSecure  bool
		metricsCertDir string
		probeAddr      string
		leaderElect    bool
		leaderNS       string
		concurrency    int
		logLevel       string
		runtimeImg     string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address the controller-runtime metrics endpoint binds to; 0 disables it")
	flag.BoolVar(&metricsSecure, "metrics-secure", true,
		"serve metrics over HTTPS to callers the API server authenticates and allows to get /metrics; false: plain HTTP to anyone")
	flag.StringVar(&metricsCertDir, "metrics-cert-dir", "",
		"directory with tls.crt and tls.key for the metrics endpoint (watched for renewals); without them a self-signed certificate is made at start")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz endpoints bind to")
	// On by default in a pod (the contract: the operator runs with leader election), so that a
	// deployment that leaves the flag out cannot run two active replicas; off by default
	// elsewhere, where there is no namespace for the Lease to go to.
	_, inCluster := os.LookupEnv("KUBERNETES_SERVICE_HOST")
	flag.BoolVar(&leaderElect, "leader-elect", inCluster,
		"elect a leader so that only one replica reconciles at a time (default true in a pod)")
	flag.StringVar(&leaderNS, "leader-election-namespace", os.Getenv("POD_NAMESPACE"),
		"namespace of the leader election Lease; in a pod the default is the pod's own namespace (POD_NAMESPACE or the service account's)")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", 4, "TradingStacks reconciled in parallel")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.StringVar(&runtimeImg, "runtime-image", os.Getenv("RUNTIME_IMAGE"),
		"default tradingd image of the stacks; empty: the image of this pod's manager container (POD_NAMESPACE, POD_NAME), else the one the build stamped in")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		slog.Error("invalid --log-level", "value", logLevel)
		os.Exit(2)
	}
	// Refused like any malformed setting, before any cluster is read: the controller would
	// run one worker instead without a word (NewTradingStackReconciler's floor).
	if concurrency < 1 {
		slog.Error("invalid --max-concurrent-reconciles: at least 1", "value", concurrency)
		os.Exit(2)
	}
	handler := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: readableAttr})
	slog.SetDefault(slog.New(handler))
	ctrl.SetLogger(logr.FromSlogHandler(handler))
	// client-go logs through klog (the metrics endpoint's token reviews, leader election):
	// into the same JSON stream, not as plain-text lines among it.
	klog.SetLogger(logr.FromSlogHandler(handler))
	log := slog.Default()
	// Go knows no container: AUTOMEMLIMIT (90%) of the cgroup's memory limit as the Go soft
	// limit, so that near it the collector works harder instead of the kernel killing the pod
	// (GOMEMLIMIT wins; a limit it cannot read it logs itself). A malformed AUTOMEMLIMIT
	// stops the start, as any malformed setting.
	if v, set := os.LookupEnv("AUTOMEMLIMIT"); set && v != "off" {
		if r, err := strconv.ParseFloat(v, 64); err != nil || !(r > 0 && r <= 1) {
			log.Error("invalid AUTOMEMLIMIT: a number above 0 and at most 1, or off", "value", v)
			os.Exit(2)
		}
	}
	_, _ = memlimit.Set(memlimit.WithLogger(log))

	namespaces := controllers.ParseWatchNamespaces(os.Getenv("WATCH_NAMESPACE"))
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), manager.Options{
		Scheme:                        controllers.NewScheme(),
		Cache:                         controllers.CacheOptions(namespaces),
		Metrics:                       controllers.MetricsOptions(metricsAddr, metricsSecure, metricsCertDir),
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              "trading-operator.trading.findmy.io",
		LeaderElectionNamespace:       leaderNS,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error("create manager", "err", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	image, err := controllers.RuntimeImage(ctx, mgr.GetAPIReader(), runtimeImg, os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"),
		tradingv1alpha1.DefaultRuntimeImage)
	cancel()
	if err != nil {
		log.Error("default runtime image", "err", err)
		os.Exit(1)
	}
	tradingv1alpha1.DefaultRuntimeImage = image
	log.Info("default runtime image", "image", image)

	reconciler := controllers.NewTradingStackReconciler(mgr, concurrency)
	reconciler.WatchNamespaces = namespaces
	if err := reconciler.SetupWithManager(mgr); err != nil {
		log.Error("set up the TradingStack controller", "err", err)
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error("add health check", "err", err)
		os.Exit(1)
	}
	// Ready once the informer caches have synced: before that a reconcile would
	// see an empty cluster.
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("informer caches not synced")
		}
		return nil
	}); err != nil {
		log.Error("add ready check", "err", err)
		os.Exit(1)
	}

	log.Info("starting manager", "watchNamespaces", namespaces, "leaderElection", leaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error("manager stopped", "err", err)
		os.Exit(1)
	}
}

// readableAttr logs a value that JSON cannot encode by its String method when it has one:
// controller-runtime logs its watch sources as values, and a source holds functions, which
// came out as "!ERROR:json: unsupported type: func(...)" in every "Starting EventSource" line.
func readableAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	v := a.Value.Any()
	switch v.(type) {
	case error, json.Marshaler, encoding.TextMarshaler:
		return a // the handler encodes these itself (slog.Level, times): no trial encoding
	}
	if s, ok := v.(fmt.Stringer); ok {
		if _, err := json.Marshal(v); err != nil {
			return slog.String(a.Key, s.String())
		}
	}
	return a
}
