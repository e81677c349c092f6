// Command bench-operator measures the TradingStack operator on a real API
// server: it starts envtest (kube-apiserver and etcd from KUBEBUILDER_ASSETS)
// and the operator's manager in a process of its own, creates N TradingStacks,
// plays kubelet for their StatefulSets, Deployments and Jobs, and reports the
// time until every child exists and every stack is Ready, the API writes the
// operator made per stack to converge, at rest and after a restart, reconciles
// per second and the manager process's peak memory.
//
//	KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go run ./hack/bench-operator -stacks 200
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/controllers"
	"github.com/findmy/trading-operator/hack/internal/repo"
)

// writeCounter counts the manager's mutating requests, by kind of request.
type writeCounter struct {
	applies, creates, deletes, status, events, other atomic.Int64
	// gets are single-object reads (not the informers' lists and watches).
	gets atomic.Int64
}

func (w *writeCounter) total() int64 {
	return w.applies.Load() + w.creates.Load() + w.deletes.Load() + w.status.Load() + w.other.Load()
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		switch req.Method {
		case http.MethodGet:
			if isObjectPath(req.URL.Path) {
				w.gets.Add(1)
			}
		case http.MethodHead, http.MethodOptions:
		default:
			switch {
			case strings.Contains(req.URL.Path, "/events"):
				w.events.Add(1)
			case strings.HasSuffix(req.URL.Path, "/status"):
				w.status.Add(1)
			case strings.Contains(req.URL.Path, "/leases"):
			case req.Method == http.MethodPatch && req.Header.Get("Content-Type") == "application/apply-patch+yaml":
				w.applies.Add(1)
			case req.Method == http.MethodPost:
				w.creates.Add(1)
			case req.Method == http.MethodDelete:
				w.deletes.Add(1)
			default:
				w.other.Add(1)
			}
		}
		return rt.RoundTrip(req)
	})
}

// isObjectPath: .../namespaces/NS/RESOURCE/NAME, one namespaced object (not a list, which
// the informers send to the collection).
func isObjectPath(path string) bool {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, seg := range segs {
		if seg == "namespaces" {
			return len(segs) >= i+4
		}
	}
	return false
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func main() {
	if os.Getenv(childEnv) == "1" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench-operator manager:", err)
			os.Exit(1)
		}
		return
	}
	stacks := flag.Int("stacks", 200, "TradingStacks to create")
	namespaces := flag.Int("namespaces", 10, "namespaces to spread them over")
	concurrency := flag.Int("concurrency", 4, "MaxConcurrentReconciles")
	restFor := flag.Duration("rest", 20*time.Second, "how long to watch a converged fleet for writes (with a resync in between)")
	flag.Parse()
	if err := run(*stacks, *namespaces, *concurrency, *restFor); err != nil {
		fmt.Fprintln(os.Stderr, "bench-operator:", err)
		os.Exit(1)
	}
}

func run(n, nsCount, concurrency int, restFor time.Duration) error {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return fmt.Errorf("KUBEBUILDER_ASSETS is not set (make bench-operator sets it)")
	}
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	root, err := repo.Root()
	if err != nil {
		return err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	// Three Services per stack: envtest's default /24 service range holds 253.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start envtest: %w", err)
	}
	defer env.Stop() //nolint:errcheck

	// The operator runs as a user of its own in a process of its own (child.go), which
	// counts its requests; the kubelet stand-in and the bench's own reads use this
	// process's client and cache, which are not counted.
	operatorUser, err := env.AddUser(envtest.User{Name: "trading-operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := operatorUser.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-operator-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return err
	}
	benchCfg := rest.CopyConfig(cfg)
	benchCfg.QPS, benchCfg.Burst = 200, 400
	scheme := controllers.NewScheme()
	c, err := client.New(benchCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	// Interrupted, the deferred env.Stop still ends kube-apiserver and etcd.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	watchOpts := controllers.CacheOptions(nil)
	watchOpts.Scheme = scheme
	watch, err := cache.New(benchCfg, watchOpts)
	if err != nil {
		return err
	}
	go func() { _ = watch.Start(ctx) }()
	if !watch.WaitForCacheSync(ctx) {
		return fmt.Errorf("the bench's cache did not start")
	}
	// The informers the bench reads, started and synced before the clock starts.
	for _, obj := range []client.ObjectList{&tradingv1alpha1.TradingStackList{}, &corev1.SecretList{}, &corev1.ServiceList{},
		&corev1.ConfigMapList{}, &appsv1.StatefulSetList{}, &appsv1.DeploymentList{}, &batchv1.JobList{},
		&policyv1.PodDisruptionBudgetList{}, &networkingv1.NetworkPolicyList{}} {
		if err := watch.List(ctx, obj, client.Limit(1)); err != nil {
			return err
		}
	}

	syncPeriod := restFor / 2
	mgr, err := startManager(ctx, kubeconfigPath, concurrency, syncPeriod)
	if err != nil {
		return err
	}
	defer func() { mgr.stop() }() // the current one: the restart below replaces it
	scrape := func() counts {
		got, err := mgr.scrape(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrape the manager:", err)
		}
		return got
	}

	nsNames := make([]string, nsCount)
	for i := range nsNames {
		nsNames[i] = fmt.Sprintf("bench-%02d", i)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsNames[i]}}); err != nil {
			return err
		}
	}

	fmt.Printf("creating %d TradingStacks in %d namespaces (MaxConcurrentReconciles %d, GOMAXPROCS %d)\n", n, nsCount, concurrency, runtime.GOMAXPROCS(0))
	atStart := scrape()
	start := time.Now()
	for i := 0; i < n; i++ {
		s := &tradingv1alpha1.TradingStack{ObjectMeta: metav1.ObjectMeta{Namespace: nsNames[i%nsCount], Name: fmt.Sprintf("s%03d", i)}}
		s.Spec.Runtime.Image = "registry.example.com/tradingd:v1"
		if err := c.Create(ctx, s); err != nil {
			return fmt.Errorf("create stack %d: %w", i, err)
		}
	}
	created := time.Since(start)

	kubeletCtx, stopKubelet := context.WithCancel(ctx)
	defer stopKubelet()
	var kwg sync.WaitGroup
	kwg.Add(1)
	go func() { defer kwg.Done(); playKubelet(kubeletCtx, watch, c) }()

	// Per default stack: 3 Secrets, StatefulSet, 3 Services, 2 Deployments,
	// ConfigMap, Job, PDB, 2 NetworkPolicies.
	want := map[string]int{
		"Secret": 3 * n, "StatefulSet": n, "Service": 3 * n, "Deployment": 2 * n,
		"ConfigMap": n, "Job": n, "PodDisruptionBudget": n, "NetworkPolicy": 2 * n,
	}
	var allChildren time.Duration
	lastReport := time.Now()
	for {
		if allChildren == 0 {
			ok, err := childrenComplete(ctx, watch, want)
			if err != nil {
				return err
			}
			if ok {
				allChildren = time.Since(start)
			}
		}
		ready, err := readyStacks(ctx, watch)
		if err != nil {
			return err
		}
		if allChildren != 0 && ready == n {
			break
		}
		if time.Since(lastReport) > 10*time.Second {
			lastReport = time.Now()
			now := scrape()
			fmt.Printf("  %5.0fs: %d of %d Ready, %.0f reconciles, %.0f writes\n", time.Since(start).Seconds(), ready, n, now.reconciles-atStart.reconciles, now.writes())
		}
		if err := mgr.alive(ctx); err != nil {
			return err
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("not converged after 10 minutes: %d of %d Ready", ready, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	converged := time.Since(start)
	atConverged := scrape()
	if dir := os.Getenv("BENCH_OPERATOR_PROFILE_DIR"); dir != "" {
		resp, err := http.Get(strings.TrimSuffix(mgr.metrics, "/metrics") + "/debug/pprof/heap")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(filepath.Join(dir, "heap.pprof"), b, 0o644)
		}
	}
	reconcilesToConverge := atConverged.reconciles - atStart.reconciles
	writesToConverge := atConverged.writes() - atStart.writes()
	stopKubelet()
	kwg.Wait()

	// At rest: let the last events drain, snapshot every resourceVersion and
	// the counters, sit through a resync, compare.
	time.Sleep(3 * time.Second)
	rvBefore, err := allResourceVersions(ctx, c, nsNames)
	if err != nil {
		return err
	}
	beforeRest := scrape()
	time.Sleep(restFor)
	rvAfter, err := allResourceVersions(ctx, c, nsNames)
	if err != nil {
		return err
	}
	changed := changedObjects(rvBefore, rvAfter)
	afterRest := scrape()

	// A restart (a new leader, an upgrade of the operator): the new process has no memory
	// of what the old one applied. It reconciles every stack once; a converged fleet should
	// cost reads, not writes.
	rss1, hwm1 := mgr.memory()
	mgr.stop()
	restartAt := time.Now()
	second, err := startManager(ctx, kubeconfigPath, concurrency, syncPeriod)
	if err != nil {
		return err
	}
	mgr = second
	for scrape().reconciles < float64(n) && time.Since(restartAt) < 5*time.Minute {
		if err := mgr.alive(ctx); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	reReconciled := time.Since(restartAt)
	time.Sleep(3 * time.Second) // the last passes finish
	afterRestart := scrape()
	rvRestart, err := allResourceVersions(ctx, c, nsNames)
	if err != nil {
		return err
	}
	changedByRestart := changedObjects(rvAfter, rvRestart)
	rss2, hwm2 := mgr.memory()

	fmt.Printf("\nresults (%d stacks, %d objects):\n", n, len(rvAfter))
	fmt.Printf("  stacks created in                 %s\n", created.Round(time.Millisecond))
	fmt.Printf("  every child exists after          %s\n", allChildren.Round(time.Millisecond))
	fmt.Printf("  every stack Ready after           %s\n", converged.Round(time.Millisecond))
	fmt.Printf("  operator writes to converge       %.0f (%.1f per stack: %.0f applies, %.0f creates, %.0f deletes, %.0f status; plus %.0f events)\n",
		writesToConverge, writesToConverge/float64(n), atConverged.applies-atStart.applies, atConverged.creates-atStart.creates,
		atConverged.deletes-atStart.deletes, atConverged.status-atStart.status, atConverged.events-atStart.events)
	fmt.Printf("  reconciles to converge            %.0f (%.1f per stack, %.0f per second)\n",
		reconcilesToConverge, reconcilesToConverge/float64(n), reconcilesToConverge/converged.Seconds())
	fmt.Printf("  at rest for %s (one resync):   %.0f reconciles, %.0f write requests, %.0f events, %d objects changed\n",
		restFor, afterRest.reconciles-beforeRest.reconciles, afterRest.writes()-beforeRest.writes(), afterRest.events-beforeRest.events, changed)
	fmt.Printf("  after a restart of the operator    every stack reconciled in %s: %.0f write requests, %.0f reads of single objects, %d objects changed\n",
		reReconciled.Round(time.Millisecond), afterRestart.writes(), afterRestart.gets, changedByRestart)
	fmt.Printf("  the manager process's memory      peak RSS (VmHWM) %.1f MiB, %.1f MiB at rest, Go heap %.1f MiB at convergence; after the restart peak %.1f MiB, %.1f MiB at the end\n",
		float64(hwm1)/1024, float64(rss1)/1024, atConverged.heapBytes/(1<<20), float64(hwm2)/1024, float64(rss2)/1024)
	fmt.Println("  (the manager runs in a process of its own, as in a cluster; kube-apiserver, etcd and the bench's client and kubelet stand-in are other processes)")
	return nil
}

// changedObjects counts the objects whose resourceVersion moved between two snapshots, and
// those that appeared.
func changedObjects(before, after map[string]string) int {
	n := 0
	for k, v := range before {
		if after[k] != v {
			n++
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			n++
		}
	}
	return n
}

// playKubelet marks StatefulSets, Deployments and Jobs ready/succeeded as the
// kubelet and the controller-manager would, until ctx ends. It reads from the
// bench's informer cache (no extra load on the API server) and writes status with
// the bench's own client.
func playKubelet(ctx context.Context, r client.Reader, c client.Client) {
	sel := client.MatchingLabels{controllers.ManagedByLabel: controllers.ManagedByValue}
	for ctx.Err() == nil {
		var stsList appsv1.StatefulSetList
		if err := r.List(ctx, &stsList, sel, client.UnsafeDisableDeepCopy); err == nil {
			for i := range stsList.Items {
				s := &stsList.Items[i]
				if s.Status.ReadyReplicas >= 1 && s.Status.ObservedGeneration == s.Generation {
					continue
				}
				s = s.DeepCopy() // the list shares the cache's objects
				s.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.Generation, Replicas: 1, ReadyReplicas: 1, CurrentReplicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}
				_ = c.Status().Update(ctx, s)
			}
		}
		var deps appsv1.DeploymentList
		if err := r.List(ctx, &deps, sel, client.UnsafeDisableDeepCopy); err == nil {
			for i := range deps.Items {
				d := &deps.Items[i]
				want := int32(1)
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				if d.Status.ObservedGeneration == d.Generation && d.Status.ReadyReplicas == want && d.Status.UpdatedReplicas == want {
					continue
				}
				d = d.DeepCopy()
				now := metav1.Now()
				d.Status = appsv1.DeploymentStatus{
					ObservedGeneration: d.Generation, Replicas: want, ReadyReplicas: want, AvailableReplicas: want, UpdatedReplicas: want,
					Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now}},
				}
				_ = c.Status().Update(ctx, d)
			}
		}
		var jobs batchv1.JobList
		if err := r.List(ctx, &jobs, sel, client.UnsafeDisableDeepCopy); err == nil {
			for i := range jobs.Items {
				j := &jobs.Items[i]
				if j.Status.CompletionTime != nil {
					continue
				}
				j = j.DeepCopy()
				startT := metav1.NewTime(time.Now().Add(-time.Second))
				now := metav1.Now()
				j.Status = batchv1.JobStatus{StartTime: &startT, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
					{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, Reason: "CompletionsReached", LastProbeTime: now, LastTransitionTime: now},
					{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, Reason: "CompletionsReached", LastProbeTime: now, LastTransitionTime: now},
				}}
				_ = c.Status().Update(ctx, j)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

var kinds = map[string]schema.GroupVersionKind{
	"Secret":              {Version: "v1", Kind: "SecretList"},
	"Service":             {Version: "v1", Kind: "ServiceList"},
	"ConfigMap":           {Version: "v1", Kind: "ConfigMapList"},
	"StatefulSet":         {Group: "apps", Version: "v1", Kind: "StatefulSetList"},
	"Deployment":          {Group: "apps", Version: "v1", Kind: "DeploymentList"},
	"Job":                 {Group: "batch", Version: "v1", Kind: "JobList"},
	"PodDisruptionBudget": {Group: "policy", Version: "v1", Kind: "PodDisruptionBudgetList"},
	"NetworkPolicy":       {Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicyList"},
}

func listManaged(ctx context.Context, c client.Client, kind string, opts ...client.ListOption) ([]unstructured.Unstructured, error) {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(kinds[kind])
	opts = append(opts, client.MatchingLabels{controllers.ManagedByLabel: controllers.ManagedByValue})
	if err := c.List(ctx, list, opts...); err != nil {
		return nil, err
	}
	return list.Items, nil
}

func childrenComplete(ctx context.Context, r client.Reader, want map[string]int) (bool, error) {
	lists := map[string]client.ObjectList{
		"Secret": &corev1.SecretList{}, "Service": &corev1.ServiceList{}, "ConfigMap": &corev1.ConfigMapList{},
		"StatefulSet": &appsv1.StatefulSetList{}, "Deployment": &appsv1.DeploymentList{}, "Job": &batchv1.JobList{},
		"PodDisruptionBudget": &policyv1.PodDisruptionBudgetList{}, "NetworkPolicy": &networkingv1.NetworkPolicyList{},
	}
	for kind, n := range want {
		list := lists[kind]
		if err := r.List(ctx, list, client.MatchingLabels{controllers.ManagedByLabel: controllers.ManagedByValue}, client.UnsafeDisableDeepCopy); err != nil {
			return false, err
		}
		if meta.LenList(list) < n {
			return false, nil
		}
	}
	return true, nil
}

func readyStacks(ctx context.Context, c client.Reader) (int, error) {
	var list tradingv1alpha1.TradingStackList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return 0, err
	}
	ready := 0
	for _, s := range list.Items {
		for _, cond := range s.Status.Conditions {
			if cond.Type == tradingv1alpha1.ConditionReady && cond.Status == metav1.ConditionTrue && cond.ObservedGeneration == s.Generation {
				ready++
			}
		}
	}
	return ready, nil
}

func allResourceVersions(ctx context.Context, c client.Client, namespaces []string) (map[string]string, error) {
	out := map[string]string{}
	var stacks tradingv1alpha1.TradingStackList
	if err := c.List(ctx, &stacks); err != nil {
		return nil, err
	}
	for _, s := range stacks.Items {
		out["TradingStack/"+s.Namespace+"/"+s.Name] = s.ResourceVersion
	}
	for kind := range kinds {
		items, err := listManaged(ctx, c, kind)
		if err != nil {
			return nil, err
		}
		for _, o := range items {
			out[kind+"/"+o.GetNamespace()+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	return out, nil
}
