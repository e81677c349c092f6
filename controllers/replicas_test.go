package controllers

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// hpaManager is the field manager of the HorizontalPodAutoscaler controller's writes (through
// the scale subresource, as kube-controller-manager makes them).
const hpaManager = "kube-controller-manager"

// hpaScale plays the HorizontalPodAutoscaler controller: it sets the Deployment's replicas
// through the scale subresource.
func hpaScale(ctx context.Context, ns, name string, replicas int32) error {
	dep := objectNamed(&appsv1.Deployment{}, ns, name)
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, dep, scale); err != nil {
		return err
	}
	scale.Spec.Replicas = replicas
	return k8s.SubResource("scale").Update(ctx, dep, client.WithSubResourceBody(scale), client.FieldOwner(hpaManager))
}

// replicaWatch records every spec.replicas the API server stores for one Deployment, from
// the moment it starts: the pods a Deployment controller would make and remove follow each.
type replicaWatch struct {
	ns, name string
	w        watch.Interface
	mu       sync.Mutex
	seen     []int32
	rvs      []string
	done     chan struct{}
}

func watchReplicas(t *testing.T, ns, name string) *replicaWatch {
	t.Helper()
	wc, err := client.NewWithWatch(testCfg, client.Options{Scheme: NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	start := waitFor(t, &appsv1.Deployment{}, ns, name)
	w, err := wc.Watch(bg, &appsv1.DeploymentList{}, client.InNamespace(ns),
		client.MatchingFields{"metadata.name": name}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: start.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	rw := &replicaWatch{ns: ns, name: name, w: w, seen: []int32{ptr.Deref(start.Spec.Replicas, 1)}, rvs: []string{start.ResourceVersion}, done: make(chan struct{})}
	go func() {
		defer close(rw.done)
		for ev := range w.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok {
				continue
			}
			rw.mu.Lock()
			rw.seen = append(rw.seen, ptr.Deref(d.Spec.Replicas, 1))
			rw.rvs = append(rw.rvs, d.ResourceVersion)
			rw.mu.Unlock()
		}
	}()
	t.Cleanup(rw.stop)
	return rw
}

func (rw *replicaWatch) stop() {
	rw.w.Stop()
	<-rw.done
}

// upToNow returns the counts stored since the watch started (each change once), up to the
// Deployment as the API server has it now.
func (rw *replicaWatch) upToNow(t *testing.T) []int32 {
	t.Helper()
	now := waitFor(t, &appsv1.Deployment{}, rw.ns, rw.name)
	var out []int32
	eventually(t, "the watch reached resourceVersion "+now.ResourceVersion, func() error {
		rw.mu.Lock()
		defer rw.mu.Unlock()
		if !slices.Contains(rw.rvs, now.ResourceVersion) {
			return fmt.Errorf("the watch is at %s", rw.rvs[len(rw.rvs)-1])
		}
		out = slices.Compact(slices.Clone(rw.seen))
		return nil
	})
	return out
}

// replicasOwners lists the field managers that own the Deployment's spec.replicas, as
// "manager/Operation" (and "/subresource" for a write through one).
func replicasOwners(t *testing.T, ns, name string) []string {
	t.Helper()
	d := waitFor(t, &appsv1.Deployment{}, ns, name)
	var out []string
	for _, mf := range d.ManagedFields {
		if mf.FieldsV1 == nil {
			continue
		}
		set := &fieldpath.Set{}
		if err := set.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
			t.Fatalf("managedFields of %s: %v", name, err)
		}
		if set.Has(fieldpath.MakePathOrDie("spec", "replicas")) {
			owner := mf.Manager + "/" + string(mf.Operation)
			if mf.Subresource != "" {
				owner += "/" + mf.Subresource
			}
			out = append(out, owner)
		}
	}
	slices.Sort(out)
	return out
}

// operatorApplyOwnsReplicas: the operator's own apply claims the count, so the apply writes it.
func operatorApplyOwnsReplicas(owners []string) bool {
	return slices.Contains(owners, FieldOwner+"/"+string(metav1.ManagedFieldsOperationApply))
}

// scaleAfterRead is the API reader of a pass that the HorizontalPodAutoscaler races: right
// after the pass first reads the Deployment, the HPA scales it to replicas. That is the
// moment between the operator's read and its apply in which an HPA's sync may land.
type scaleAfterRead struct {
	client.Reader
	ns, name string
	replicas int32
	fired    atomic.Bool
}

func (r *scaleAfterRead) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if err := r.Reader.Get(ctx, k, obj, opts...); err != nil {
		return err
	}
	_, typed := obj.(*appsv1.Deployment)
	if (typed || obj.GetObjectKind().GroupVersionKind().Kind == "Deployment") && k == key(r.ns, r.name) && r.fired.CompareAndSwap(false, true) {
		return hpaScale(ctx, r.ns, r.name, r.replicas)
	}
	return nil
}

// passRacedByHPA runs one pass of a fresh reconciler (a restarted operator: it remembers no
// apply) during which the HPA scales NAME-api to replicas right after the pass read it, and
// returns the counts NAME-api had from just before the pass until after it. The pass's cache
// shows the stale objects instead of the API server's.
func passRacedByHPA(t *testing.T, ns, stack string, replicas int32, stale ...client.Object) []int32 {
	t.Helper()
	rw := watchReplicas(t, ns, stack+"-api")
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	r := NewTradingStackReconciler(mgr, 1)
	r.Client = staleClient{Client: mgr.GetClient(), stale: stale, statusWrites: &atomic.Int32{}}
	reader := &scaleAfterRead{Reader: r.APIReader, ns: ns, name: stack + "-api", replicas: replicas}
	r.APIReader = reader
	if _, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, stack)}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if !reader.fired.Load() {
		t.Fatalf("the pass never read Deployment %s-api from the API server: the race was not played", stack)
	}
	seen := rw.upToNow(t)
	rw.stop()
	return seen
}

// testHPAScaleNotUndone: with autoscaling, the HorizontalPodAutoscaler alone writes the
// runtime's replica count once the Deployment exists (made with minReplicas). A pass that read
// NAME-api just before the HPA scaled it applied the count it had read, undoing the scale
// (pods made and removed until the HPA's next sync): now the operator's apply never claims
// spec.replicas while autoscaling, whether it runs as usual, after a restart, or keeps the
// pod template during a database move.
func testHPAScaleNotUndone(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "hs", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}
	}))
	makeReady(t, ns, "hs")
	operatorWrites.settle(t, ns)
	d := waitFor(t, &appsv1.Deployment{}, ns, "hs-api")
	if ptr.Deref(d.Spec.Replicas, 0) != 2 {
		t.Errorf("made with replicas %d, want minReplicas 2", ptr.Deref(d.Spec.Replicas, 1))
	}
	if owners := replicasOwners(t, ns, "hs-api"); operatorApplyOwnsReplicas(owners) || len(owners) == 0 {
		t.Errorf("spec.replicas owned by %v: want it handed over (owned, but not by the operator's apply)", owners)
	}

	if seen := passRacedByHPA(t, ns, "hs", 5); !slices.Equal(seen, []int32{2, 5}) {
		t.Errorf("replicas %v across a pass the HPA's scale to 5 raced, want [2 5]", seen)
	}
	if owners := replicasOwners(t, ns, "hs-api"); !slices.Equal(owners, []string{hpaManager + "/Update/scale"}) {
		t.Errorf("spec.replicas owned by %v after the HPA's scale, want the HPA's alone", owners)
	}

	// The database moves: the runtime keeps its live pod template until the new database is
	// migrated, and the count stays the HPA's through it.
	moveToExternalDatabase(t, ns, "hs", "corp-db", "postgres://app:pw@db.corp:5432/trading")
	waitExternalMigrationJob(t, ns, "hs", "corp-db")
	waitMessage(t, ns, "hs", tradingv1alpha1.ConditionRuntimeAvailable, saysHeld)
	operatorWrites.settle(t, ns)
	if seen := passRacedByHPA(t, ns, "hs", 3); !slices.Equal(seen, []int32{5, 3}) {
		t.Errorf("replicas %v across a held pass the HPA's scale to 3 raced, want [5 3]", seen)
	}
	if owners := replicasOwners(t, ns, "hs-api"); operatorApplyOwnsReplicas(owners) {
		t.Errorf("spec.replicas owned by %v while held: the operator's apply claims it", owners)
	}
	if hpa := waitFor(t, &autoscalingv2.HorizontalPodAutoscaler{}, ns, "hs-api"); hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 2 {
		t.Errorf("HPA minReplicas %v", hpa.Spec.MinReplicas)
	}
}

// testHPARacesHandover: the pass that turns autoscaling on for a serving Deployment hands the
// count over to the HPA; an HPA scale between that pass's read and its writes is kept (the
// handover must not apply the count it read, nor leave the field to be removed).
func testHPARacesHandover(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ho", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 4 }))
	makeReady(t, ns, "ho")
	// The manager's passes must not make the handover first: the stack is paused (they hold
	// its children still), and the racing pass sees it unpaused.
	updateStack(t, ns, "ho", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Paused = true
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}
	})
	waitCondition(t, ns, "ho", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
	operatorWrites.settle(t, ns)
	if owners := replicasOwners(t, ns, "ho-api"); !operatorApplyOwnsReplicas(owners) {
		t.Fatalf("spec.replicas owned by %v before autoscaling took effect, want the operator's apply among them", owners)
	}
	unpaused := getStack(t, ns, "ho")
	unpaused.Spec.Paused = false
	if seen := passRacedByHPA(t, ns, "ho", 5, unpaused); !slices.Equal(seen, []int32{4, 5}) {
		t.Errorf("replicas %v across the pass that turned autoscaling on, raced by the HPA's scale to 5; want [4 5]", seen)
	}
	if owners := replicasOwners(t, ns, "ho-api"); !slices.Equal(owners, []string{hpaManager + "/Update/scale"}) {
		t.Errorf("spec.replicas owned by %v after the handover the HPA raced, want the HPA's alone", owners)
	}
}
