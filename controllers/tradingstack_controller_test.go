package controllers

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// TestOperator runs the behaviours in a fixed order: the first needs the
// prometheus-operator CRDs absent and installs them; the others run after.
func TestOperator(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"MonitoringCRDAbsentThenInstalled", testMonitoringCRDInstalledLater},
		{"MonitoringCRDDeletedNotWatched", testMonitoringCRDDeletedNotWatched},
		{"MonitoringReadAfterCRDGoneBounded", testMonitoringReadAfterCRDGoneBounded},
		{"EveryChildCreated", testEveryChildCreated},
		{"EventsSaid", testEventsSaid},
		{"ChildrenRestored", testChildrenRestored},
		{"QuietAtRest", testQuietAtRest},
		{"SecretsStable", testSecretsStable},
		{"ImageChangeWaitsForMigration", testImageChangeWaitsForMigration},
		{"FailedMigration", testFailedMigration},
		{"RetainDataOnDelete", testRetainDataOnDelete},
		{"BrokenStackDoesNotBlockOthers", testBrokenStackDoesNotBlockOthers},
		{"Paused", testPaused},
		{"PolicyFollowsSpec", testPolicyFollowsSpec},
		{"ValidationRules", testValidationRules},
		{"StorageGrows", testStorageGrows},
		{"StorageGrowRefusedSaid", testStorageGrowRefusedSaid},
		{"StorageNotShrunk", testStorageNotShrunk},
		{"SpecDropsEntries", testSpecDropsEntries},
		{"WatchNamespace", testWatchNamespace},
		{"FailedApplyIsReported", testFailedApplyIsReported},
		{"AutoscalingKeepsReplicas", testAutoscalingKeepsReplicas},
		{"HPAScaleNotUndone", testHPAScaleNotUndone},
		{"HPARacesHandover", testHPARacesHandover},
		{"LegacyMigrationStatus", testLegacyMigrationStatus},
		{"MonitoringFailureKeepsReady", testMonitoringFailureKeepsReady},
		{"CacheHoldsOnlyManaged", testCacheHoldsOnlyManaged},
		{"MoveToExternalKeepsVolume", testMoveToExternalKeepsVolume},
		{"PhaseAndColumns", testPhaseAndColumns},
		{"StaleStackNotWritten", testStaleStackNotWritten},
		{"MiddleStateMended", testMiddleStateMended},
		{"HandEditsReverted", testHandEditsReverted},
		{"UserSecretNotAdopted", testUserSecretNotAdopted},
		{"UserSecretMissingKeys", testUserSecretMissingKeys},
		{"ForeignObjectLeftAlone", testForeignObjectLeftAlone},
		{"SecretLabelRemovedStaysOurs", testSecretLabelRemovedStaysOurs},
		{"GeneratedSecretKeysPutBack", testGeneratedSecretKeysPutBack},
		{"EmptiedAdminPasswordKept", testEmptiedAdminPasswordKept},
		{"DSNMismatchWarned", testDSNMismatchWarned},
		{"UnusedRedisFieldsWarned", testUnusedRedisFieldsWarned},
		{"InvalidHandEditsReverted", testInvalidHandEditsReverted},
		{"DeployManifests", testDeployManifests},
		{"SamplesValid", testSamplesValid},
		{"NetworkPoliciesFirst", testNetworkPoliciesFirst},
		{"MissingSecretWhileServing", testMissingSecretWhileServing},
		{"RedisTLSCA", testRedisTLSCA},
		{"ExternalPostgresCA", testExternalPostgresCA},
		{"PoolsWarning", testPoolsWarning},
		{"InvalidChildIsFailed", testInvalidChildIsFailed},
		{"EditWhileStoppedPutBack", testEditWhileStoppedPutBack},
		{"StatusWritesNotApplied", testStatusWritesNotApplied},
		{"AnnotationRequestsPass", testAnnotationRequestsPass},
		{"RolloutNotReportedDoneEarly", testRolloutNotReportedDoneEarly},
		{"ImageFlipsDuringMigration", testImageFlipsDuringMigration},
		{"PausedDuringMigration", testPausedDuringMigration},
		{"MigrationPodWaiting", testMigrationPodWaiting},
		{"FailedMigrationSaysWhy", testFailedMigrationSaysWhy},
		{"RuntimePodsWaitSaid", testRuntimePodsWaitSaid},
		{"BackendPodsWaitSaid", testBackendPodsWaitSaid},
		{"ReplicasUnavailableWaitSaid", testReplicasUnavailableWaitSaid},
		{"StuckRolloutThroughScale", testStuckRolloutThroughScale},
		{"StuckRolloutNewTemplate", testStuckRolloutNewTemplate},
		{"FirstRolloutStuckSaid", testFirstRolloutStuckSaid},
		{"MoveWaitsForUserSecret", testMoveWaitsForUserSecret},
		{"MoveBothWaitsForRedisSecret", testMoveBothWaitsForRedisSecret},
		{"MoveRetiresAfterRollout", testMoveRetiresAfterRollout},
		{"WrongDSNKeepsManaged", testWrongDSNKeepsManaged},
		{"MoveHoldsRuntime", testMoveHoldsRuntime},
		{"ExternalMovesHoldRuntime", testExternalMovesHoldRuntime},
		{"KeptWhilePodsRefused", testKeptWhilePodsRefused},
		{"UserSecretKeyAddedNotStale", testUserSecretKeyAddedNotStale},
		{"QuietEveryConfig", testQuietEveryConfig},
		{"OthersEditsNotFought", testOthersEditsNotFought},
		{"EditsOfEveryKindReverted", testEditsOfEveryKindReverted},
		{"QuietInOtherStates", testQuietInOtherStates},
		{"PodsRefusedSaid", testPodsRefusedSaid},
		{"RefusedRolloutStuckSaid", testRefusedRolloutStuckSaid},
		{"RefusedChildKeepsOthers", testRefusedChildKeepsOthers},
		{"RefusedServiceMonitorKeepsAlerts", testRefusedServiceMonitorKeepsAlerts},
		{"DeletedDuringPass", testDeletedDuringPass},
		{"TerminatingChildLeftToGo", testTerminatingChildLeftToGo},
		{"WaitingStackKeepsPolicyAndMonitoring", testWaitingStackKeepsPolicyAndMonitoring},
		{"KeptSaidWhenAStepFails", testKeptSaidWhenAStepFails},
		{"NamespaceTerminatingQuiet", testNamespaceTerminatingQuiet},
		{"MigrationPodsRefusedSaid", testMigrationPodsRefusedSaid},
		{"DatabasePodsRefusedSaid", testDatabasePodsRefusedSaid},
		{"TerminatingMigrationJobLeftToGo", testTerminatingMigrationJobLeftToGo},
		{"HeldMigrationJobNotPolled", testHeldMigrationJobNotPolled},
		{"RedisMaxMemoryFollowsLimit", testRedisMaxMemoryFollowsLimit},
	} {
		if !t.Run(tc.name, tc.run) && tc.name == "MonitoringCRDAbsentThenInstalled" {
			// The later tests expect the CRDs installed.
			installMonitoringCRDs(t)
		}
	}
}

var monitoringCRDsInstalled bool

func monitoringCRDOptions(t *testing.T) envtest.CRDInstallOptions {
	t.Helper()
	dir, err := prometheusOperatorCRDDir()
	if err != nil {
		t.Fatal(err)
	}
	return envtest.CRDInstallOptions{
		Paths: []string{
			dir + "/monitoring.coreos.com_servicemonitors.yaml",
			dir + "/monitoring.coreos.com_prometheusrules.yaml",
		},
		ErrorIfPathMissing: true,
	}
}

func installMonitoringCRDs(t *testing.T) {
	t.Helper()
	if monitoringCRDsInstalled {
		return
	}
	if _, err := envtest.InstallCRDs(testCfg, monitoringCRDOptions(t)); err != nil {
		t.Fatalf("install prometheus-operator CRDs: %v", err)
	}
	monitoringCRDsInstalled = true
}

// uninstallMonitoringCRDs removes the CRDs a previous run (go test -count=N)
// installed, and waits until they are gone.
func uninstallMonitoringCRDs(t *testing.T) {
	t.Helper()
	if !monitoringCRDsInstalled {
		return
	}
	if err := envtest.UninstallCRDs(testCfg, monitoringCRDOptions(t)); err != nil {
		t.Fatalf("uninstall prometheus-operator CRDs: %v", err)
	}
	eventually(t, "prometheus-operator CRDs gone", func() error {
		for _, name := range []string{"servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"} {
			if err := k8s.Get(bg, key("", name), &apiextensionsv1.CustomResourceDefinition{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("CRD %s still there (%v)", name, err)
			}
		}
		return nil
	})
	monitoringCRDsInstalled = false
}

func testMonitoringCRDInstalledLater(t *testing.T) {
	uninstallMonitoringCRDs(t)
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mon"))
	makeReady(t, ns, "mon")

	s := waitCondition(t, ns, "mon", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled)
	if !strings.Contains(condition(s, tradingv1alpha1.ConditionMonitoringReady).Message, "ServiceMonitor") {
		t.Errorf("MonitoringReady message does not say what is missing: %q", condition(s, tradingv1alpha1.ConditionMonitoringReady).Message)
	}
	if c := condition(s, tradingv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("stack not Ready without the monitoring CRDs: %s", describeConditions(s))
	}
	// No error loop: further passes neither fail nor schedule a retry.
	if res := reconcileDirectly(t, ns, "mon", 3); res.RequeueAfter != 0 {
		t.Errorf("a stack without the monitoring CRDs requeues after %s", res.RequeueAfter)
	}

	// Install the real CRDs; the running manager must pick them up.
	installMonitoringCRDs(t)
	sm := waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "mon-api")
	if !hasControllerRef(sm, s) {
		t.Errorf("ServiceMonitor mon-api is not owned by the stack: %v", sm.OwnerReferences)
	}
	if len(sm.Spec.Endpoints) == 0 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints = %+v, want port metrics path /metrics", sm.Spec.Endpoints)
	}
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "mon-alerts")
	waitCondition(t, ns, "mon", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)

	// And it is a watched child from now on: deleted, it comes back.
	deleteAndWaitRecreated := func(what string, sm *monitoringv1.ServiceMonitor) {
		t.Helper()
		deleteAndWaitPutBack(t, sm, what)
	}
	deleteAndWaitRecreated("ServiceMonitor recreated", sm)

	// The CRDs uninstalled: the stack says so and stays Ready; installed again, the objects
	// and their watch come back (MonitoringCRDDeletedNotWatched: the kinds are not watched
	// meanwhile).
	//
	// While a CRD is being deleted (held here by a finalizer of the test's) it counts as
	// absent: its objects are removed and new ones refused, which made every stack's apply
	// fail (ApplyFailed, with a retry loop) for as long as it terminated.
	crd := &apiextensionsv1.CustomResourceDefinition{}
	holdCRD := func(hold bool) {
		t.Helper()
		eventually(t, "the ServiceMonitor CRD's finalizer", func() error {
			if err := k8s.Get(bg, key("", "servicemonitors.monitoring.coreos.com"), crd); err != nil {
				return err
			}
			if hold {
				crd.Finalizers = append(crd.Finalizers, "test.trading.findmy.io/hold")
			} else {
				crd.Finalizers = slices.DeleteFunc(crd.Finalizers, func(f string) bool { return f == "test.trading.findmy.io/hold" })
			}
			return k8s.Update(bg, crd)
		})
	}
	holdCRD(true)
	// A failure below must not leave the CRD terminating for every later test.
	t.Cleanup(func() {
		c := &apiextensionsv1.CustomResourceDefinition{}
		if err := k8s.Get(bg, key("", "servicemonitors.monitoring.coreos.com"), c); err == nil && slices.Contains(c.Finalizers, "test.trading.findmy.io/hold") {
			holdCRD(false)
		}
	})
	if err := k8s.Delete(bg, crd); err != nil {
		t.Fatal(err)
	}
	s = waitCondition(t, ns, "mon", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled)
	if c := condition(s, tradingv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("stack not Ready while the ServiceMonitor CRD terminates: %s", describeConditions(s))
	}
	holdCRD(false)
	uninstallMonitoringCRDs(t)
	waitCondition(t, ns, "mon", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled)
	waitCondition(t, ns, "mon", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	installMonitoringCRDs(t)
	deleteAndWaitRecreated("ServiceMonitor recreated after the CRD came back", waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "mon-api"))

	// The kind's informer, failing its lists while the CRD was gone, comes back with backoff:
	// a pass whose cache does not show the ServiceMonitor it applied looks again soon, so
	// that one deleted meanwhile (no event reaches the operator) is put back. (The deletion
	// above is put back by the next look when the informer is still down: CI saw it stay
	// deleted for 90 s.)
	r, _ := staleReconciler()
	sc := r.Client.(staleClient)
	sc.hidden = []client.Object{objectNamed(&monitoringv1.ServiceMonitor{}, ns, "mon-api")}
	r.Client = sc
	res, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, "mon")})
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter == 0 || res.RequeueAfter > crdSettle {
		t.Errorf("a pass whose cache does not show the ServiceMonitor it applied asks for %+v; want to look again within %v", res, crdSettle)
	}
}

// testMonitoringCRDDeletedNotWatched: the monitoring CRDs deleted under a Ready stack, the
// operator stops watching their kinds. Their informers kept running, and their reflectors
// logged `"Failed to watch" ... could not find the requested resource` every few seconds
// (backing off to 30 s) for as long as the CRDs stayed away. Installed again, the kinds are
// watched afresh: the objects come back, and one deleted by hand is put back. The same with
// WATCH_NAMESPACE, whose cache keeps an informer per namespace.
func testMonitoringCRDDeletedNotWatched(t *testing.T) {
	crdDeletedNotWatched(t, newNamespace(t))
	ns := newNamespace(t)
	stopManagerForTest(t)
	if err := startManager(ns); err != nil {
		t.Fatalf("start a manager for %s: %v", ns, err)
	}
	crdDeletedNotWatched(t, ns)
}

func crdDeletedNotWatched(t *testing.T, ns string) {
	t.Helper()
	installMonitoringCRDs(t)
	createStack(t, newStack(ns, "gone"))
	makeReady(t, ns, "gone")
	waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "gone-api")
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "gone-alerts")
	waitCondition(t, ns, "gone", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)

	uninstallMonitoringCRDs(t)
	waitCondition(t, ns, "gone", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled)
	waitCondition(t, ns, "gone", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	// The reflector of a kind left watched retries its list at about 1, 2, 4 and 8 s: ten
	// seconds see some of its errors.
	mark := operatorLog.mark()
	time.Sleep(10 * time.Second)
	var failed []string
	for _, line := range operatorLog.since(mark, "Failed to watch") {
		if l := strings.ToLower(line); strings.Contains(l, "servicemonitor") || strings.Contains(l, "prometheusrule") {
			failed = append(failed, line)
		}
	}
	if len(failed) > 0 {
		t.Errorf("with the monitoring CRDs gone, the operator still watches their kinds and logs %d errors in 10 s, e.g.\n%s", len(failed), failed[0])
	}

	installMonitoringCRDs(t)
	sm := waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "gone-api")
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "gone-alerts")
	waitCondition(t, ns, "gone", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)
	deleteAndWaitPutBack(t, sm, "ServiceMonitor put back once its CRD is installed again")
	deleteAndWaitPutBack(t, waitFor(t, &monitoringv1.PrometheusRule{}, ns, "gone-alerts"), "PrometheusRule put back once its CRD is installed again")
}

// testMonitoringReadAfterCRDGoneBounded: a pass that found the ServiceMonitor CRD installed
// just before it went (here: a view of the CRDs that has not seen the deletion, and the CRD's
// event handled while the pass runs) reads the kind after its informer was removed, which
// makes a new informer that cannot sync. The read fails
// after informerSyncTimeout instead of holding the pass (and a worker) for good, and the
// stack's next pass removes that informer, so it does not log failed lists from then on.
func testMonitoringReadAfterCRDGoneBounded(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	createStack(t, newStack(ns, "late"))
	makeReady(t, ns, "late")
	waitCondition(t, ns, "late", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)
	uninstallMonitoringCRDs(t)
	t.Cleanup(func() { installMonitoringCRDs(t) })
	waitCondition(t, ns, "late", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled)

	r, _ := staleReconciler()
	cache, c := r.monitoring.cache, r.Client
	r.monitoring.cache = serviceMonitorCRDStillThere{cache}
	r.Client = crdEventBeforeRead{Client: c, m: r.monitoring, once: &sync.Once{}}
	done := make(chan error, 1)
	go func() {
		_, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, "late")})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("a pass that read the ServiceMonitors after their CRD went succeeded")
		}
	case <-time.After(3 * informerSyncTimeout):
		t.Fatalf("a pass that read the ServiceMonitors after their CRD went still runs after %v", 3*informerSyncTimeout)
	}

	// The stack's next pass, which sees the CRD gone.
	r.monitoring.cache, r.Client = cache, c
	if _, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, "late")}); err != nil {
		t.Fatal(err)
	}
	mark := operatorLog.mark()
	time.Sleep(10 * time.Second)
	if failed := operatorLog.since(mark, "Failed to watch", "ServiceMonitor"); len(failed) > 0 {
		t.Errorf("the informer made by a read after the CRD went still runs: %d errors in 10 s, e.g.\n%s", len(failed), failed[0])
	}
}

// serviceMonitorCRDStillThere is a cache that has not seen the ServiceMonitor CRD deleted.
type serviceMonitorCRDStillThere struct{ cache.Cache }

func (c serviceMonitorCRDStillThere) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*metav1.PartialObjectMetadata); ok && k.Name == crdName(serviceMonitorGK) {
		obj.SetName(k.Name)
		return nil
	}
	return c.Cache.Get(ctx, k, obj, opts...)
}

// crdEventBeforeRead handles the ServiceMonitor CRD's deletion (unwatch) just before the
// pass's first read of a ServiceMonitor.
type crdEventBeforeRead struct {
	client.Client
	m    *monitoringAPIs
	once *sync.Once
}

func (c crdEventBeforeRead) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*monitoringv1.ServiceMonitor); ok {
		c.once.Do(func() { c.m.unwatch(ctx, serviceMonitorGK) })
	}
	return c.Client.Get(ctx, k, obj, opts...)
}

// contractChildren lists every child of a default stack NAME by kind and name.
func contractChildren(name string) []client.Object {
	named := func(o client.Object, n string) client.Object { o.SetName(n); return o }
	return []client.Object{
		named(&corev1.Secret{}, name+"-postgres-credentials"),
		named(&corev1.Secret{}, name+"-jwt"),
		named(&corev1.Secret{}, name+"-admin"),
		named(&appsv1.StatefulSet{}, name+"-postgres"),
		named(&corev1.Service{}, name+"-postgres"),
		named(&appsv1.Deployment{}, name+"-redis"),
		named(&corev1.Service{}, name+"-redis"),
		named(&corev1.ConfigMap{}, name+"-runtime"),
		named(&appsv1.Deployment{}, name+"-api"),
		named(&corev1.Service{}, name+"-api"),
		named(&policyv1.PodDisruptionBudget{}, name+"-api"),
		named(&monitoringv1.ServiceMonitor{}, name+"-api"),
		named(&monitoringv1.PrometheusRule{}, name+"-alerts"),
	}
}

func testEveryChildCreated(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	createStack(t, newStack(ns, "full", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.RetainDataOnDelete = ptr.To(false) // so the Secrets are owned too
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4}
	}))
	s := makeReady(t, ns, "full")

	want := map[string]string{
		"app.kubernetes.io/instance":   "full",
		"app.kubernetes.io/managed-by": "trading-operator",
	}
	check := func(o client.Object) {
		t.Helper()
		kind := fmt.Sprintf("%T", o)
		if err := k8s.Get(bg, key(ns, o.GetName()), o); err != nil {
			t.Errorf("%s %s: %v", kind, o.GetName(), err)
			return
		}
		for k, v := range want {
			if o.GetLabels()[k] != v {
				t.Errorf("%s %s: label %s=%q, want %q", kind, o.GetName(), k, o.GetLabels()[k], v)
			}
		}
		for _, k := range []string{"app.kubernetes.io/name", "app.kubernetes.io/component"} {
			if o.GetLabels()[k] == "" {
				t.Errorf("%s %s: label %s missing", kind, o.GetName(), k)
			}
		}
		if !hasControllerRef(o, s) {
			t.Errorf("%s %s: not controlled by the stack: %v", kind, o.GetName(), o.GetOwnerReferences())
		}
	}
	for _, o := range contractChildren("full") {
		check(o)
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	hpa.SetName("full-api")
	check(hpa)
	job := waitMigrationJob(t, ns, "full", "registry.example.com/tradingd:v1")
	check(job)
	if len(job.Spec.Template.Spec.Containers) == 0 || !strings.Contains(strings.Join(append(job.Spec.Template.Spec.Containers[0].Command, job.Spec.Template.Spec.Containers[0].Args...), " "), "migrate") {
		t.Errorf("migration Job does not run `tradingd migrate`: %v %v", job.Spec.Template.Spec.Containers[0].Command, job.Spec.Template.Spec.Containers[0].Args)
	}
	nps := &networkingv1.NetworkPolicyList{}
	if err := k8s.List(bg, nps, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(nps.Items) == 0 {
		t.Errorf("no NetworkPolicies")
	}
	for i := range nps.Items {
		check(&nps.Items[i])
	}

	// The runtime Deployment: image, hash annotation, probes, hardening.
	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "full-api"), dep); err != nil {
		t.Fatal(err)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example.com/tradingd:v1" {
		t.Errorf("runtime image %q", c.Image)
	}
	if len(dep.Spec.Template.Annotations) == 0 {
		t.Errorf("runtime pod template has no config hash annotation")
	}
	if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem ||
		c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("runtime container not hardened: %+v", c.SecurityContext)
	}
	if c.Resources.Requests.Cpu().IsZero() || job.Spec.Template.Spec.Containers[0].Resources.Requests.Memory().IsZero() {
		t.Errorf("containers without resource requests")
	}

	st := s.Status
	if st.Phase != tradingv1alpha1.PhaseReady || st.ObservedGeneration != s.Generation {
		t.Errorf("status phase %q observedGeneration %d (generation %d)", st.Phase, st.ObservedGeneration, s.Generation)
	}
	if st.Secrets.JWT != "full-jwt" || st.Secrets.Admin != "full-admin" || st.Secrets.PostgresCredentials != "full-postgres-credentials" {
		t.Errorf("status.secrets = %+v", st.Secrets)
	}
	if st.Endpoints.API == "" || st.Migration.Image != "registry.example.com/tradingd:v1" || st.SchemaVersion == "" || st.Runtime.Image == "" {
		t.Errorf("status = %+v", st)
	}
	for _, ct := range []string{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ConditionMigrationsSucceeded,
		tradingv1alpha1.ConditionRuntimeAvailable, tradingv1alpha1.ConditionMonitoringReady, tradingv1alpha1.ConditionReady} {
		if c := condition(s, ct); c == nil || c.Status != metav1.ConditionTrue || c.Reason == "" || c.Message == "" || c.ObservedGeneration != s.Generation {
			t.Errorf("condition %s = %+v", ct, c)
		}
	}
}

// testEventsSaid: the contract's "Events on every child created and every condition that
// changes", read as kubectl describe reads them (events.k8s.io, regarding the stack): a
// Created event naming each child of a new stack, one for each condition it set, each with a
// CamelCase reason and a note; and a condition that changes later gets one more.
func testEventsSaid(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ev"))
	makeReady(t, ns, "ev")
	operatorWrites.settle(t, ns)

	camel := regexp.MustCompile(`^[A-Z][A-Za-z0-9]*$`)
	created := map[string]bool{}
	said := map[string]bool{}
	for _, e := range stackEvents(t, ns, "ev") {
		if !camel.MatchString(e.Reason) || e.Note == "" {
			t.Errorf("event %s %q: reason not CamelCase or no note", e.Reason, e.Note)
		}
		if e.Reason == "Created" && e.Related != nil {
			created[e.Related.Kind+"/"+e.Related.Name] = true
		}
		if c, ok := strings.CutPrefix(e.Action, "Set"); ok && strings.HasPrefix(e.Note, c+" is ") {
			said[c] = true
		}
	}
	want := []string{"Job/" + getStack(t, ns, "ev").Status.Migration.JobName}
	for _, o := range contractChildren("ev") {
		kind := reflect.TypeOf(o).Elem().Name()
		want = append(want, kind+"/"+o.GetName())
	}
	nps := &networkingv1.NetworkPolicyList{}
	if err := k8s.List(bg, nps, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, np := range nps.Items {
		want = append(want, "NetworkPolicy/"+np.Name)
	}
	for _, w := range want {
		if !created[w] {
			t.Errorf("no Created event for %s; events for: %v", w, slices.Sorted(maps.Keys(created)))
		}
	}
	conds := []string{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ConditionMigrationsSucceeded,
		tradingv1alpha1.ConditionRuntimeAvailable, tradingv1alpha1.ConditionMonitoringReady, tradingv1alpha1.ConditionReady}
	for _, c := range conds {
		if !said[c] {
			t.Errorf("no event for condition %s", c)
		}
	}

	// The database's pod no longer ready: DatabaseReady and Ready change, and say so.
	n := len(stackEvents(t, ns, "ev"))
	eventually(t, "ev-postgres without a ready pod", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, "ev-postgres"), sts); err != nil {
			return err
		}
		sts.Status.ReadyReplicas, sts.Status.AvailableReplicas = 0, 0
		return k8s.Status().Update(bg, sts)
	})
	waitCondition(t, ns, "ev", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady)
	operatorWrites.settle(t, ns)
	warned := map[string]bool{}
	for _, e := range stackEvents(t, ns, "ev")[n:] {
		if e.Type == corev1.EventTypeWarning {
			warned[strings.TrimPrefix(e.Action, "Set")] = true
		}
	}
	for _, c := range []string{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ConditionReady} {
		if !warned[c] {
			t.Errorf("no Warning event for %s turning False", c)
		}
	}
}

func testChildrenRestored(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "heal"))
	makeReady(t, ns, "heal")

	// Deleted by hand: put back.
	for _, o := range []client.Object{
		objectNamed(&corev1.Service{}, ns, "heal-api"),
		objectNamed(&corev1.ConfigMap{}, ns, "heal-runtime"),
		objectNamed(&appsv1.Deployment{}, ns, "heal-api"),
		objectNamed(&appsv1.StatefulSet{}, ns, "heal-postgres"),
		objectNamed(&networkingv1.NetworkPolicy{}, ns, mustFirstNetworkPolicy(t, ns)),
		objectNamed(&batchv1.Job{}, ns, getStack(t, ns, "heal").Status.Migration.JobName),
		objectNamed(&policyv1.PodDisruptionBudget{}, ns, "heal-api"), // watched for spec changes and deletion only
	} {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		deleteAndWaitPutBack(t, o, fmt.Sprintf("%T %s recreated", o, o.GetName()))
	}

	// Edited by hand: put back.
	cm := &corev1.ConfigMap{}
	if err := k8s.Get(bg, key(ns, "heal-runtime"), cm); err != nil {
		t.Fatal(err)
	}
	original := maps.Clone(cm.Data)
	for k := range cm.Data {
		cm.Data[k] = "edited by hand"
	}
	cm.Data["MAX_DAILY_LOSS"] = "1" // a setting the spec does not have: removed too
	if err := k8s.Update(bg, cm); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ConfigMap heal-runtime restored", func() error {
		fresh := &corev1.ConfigMap{}
		if err := k8s.Get(bg, key(ns, "heal-runtime"), fresh); err != nil {
			return err
		}
		if !maps.Equal(fresh.Data, original) {
			return fmt.Errorf("data still %v", fresh.Data)
		}
		return nil
	})

	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "heal-api"), dep); err != nil {
		t.Fatal(err)
	}
	dep.Spec.Template.Spec.Containers[0].Image = "evil.example.com/other:latest"
	if err := k8s.Update(bg, dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Deployment heal-api image restored", func() error {
		fresh := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "heal-api"), fresh); err != nil {
			return err
		}
		if img := fresh.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/tradingd:v1" {
			return fmt.Errorf("image still %s", img)
		}
		return nil
	})

	// Added by hand to the Deployment: an environment variable that would override the
	// ConfigMap, a port and a sidecar; all removed (Server-Side Apply alone keeps them).
	if err := k8s.Get(bg, key(ns, "heal-api"), dep); err != nil {
		t.Fatal(err)
	}
	c := &dep.Spec.Template.Spec.Containers[0]
	c.Env = append(c.Env, corev1.EnvVar{Name: "RATE_LIMIT_LOGIN", Value: "0"})
	c.Ports = append(c.Ports, corev1.ContainerPort{Name: "debug", ContainerPort: 6060})
	dep.Spec.Template.Spec.Containers = append(dep.Spec.Template.Spec.Containers,
		corev1.Container{Name: "sidecar", Image: "evil.example.com/sidecar:latest"})
	if err := k8s.Update(bg, dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Deployment heal-api without what was added by hand", func() error {
		fresh := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "heal-api"), fresh); err != nil {
			return err
		}
		cs := fresh.Spec.Template.Spec.Containers
		if len(cs) != 1 {
			return fmt.Errorf("%d containers", len(cs))
		}
		for _, e := range cs[0].Env {
			if e.Name == "RATE_LIMIT_LOGIN" {
				return fmt.Errorf("env still has RATE_LIMIT_LOGIN")
			}
		}
		if len(cs[0].Ports) != 2 || len(cs[0].Env) == 0 {
			return fmt.Errorf("ports %v, env %v", cs[0].Ports, cs[0].Env)
		}
		return nil
	})

	// An env var the operator takes from a Secret, turned into a literal value by hand: the
	// apply alone would add valueFrom next to the value, which the API server refuses, on
	// every pass; the containers are put back whole instead.
	if err := k8s.Get(bg, key(ns, "heal-api"), dep); err != nil {
		t.Fatal(err)
	}
	edited := false
	for i, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "JWT_KEYS" && e.ValueFrom != nil {
			dep.Spec.Template.Spec.Containers[0].Env[i] = corev1.EnvVar{Name: "JWT_KEYS", Value: "k1:aGFuZA=="}
			edited = true
		}
	}
	if !edited {
		t.Fatal("no JWT_KEYS from a Secret in Deployment heal-api")
	}
	if err := k8s.Update(bg, dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Deployment heal-api JWT_KEYS from its Secret again", func() error {
		fresh := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "heal-api"), fresh); err != nil {
			return err
		}
		for _, e := range fresh.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "JWT_KEYS" && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				return fmt.Errorf("JWT_KEYS is %+v", e)
			}
		}
		// The lists put back are owned by the operator's applies alone: an Update entry of
		// the put-back patch would keep entries the spec drops later.
		for _, mf := range fresh.ManagedFields {
			if mf.Manager == FieldOwner && mf.Operation != metav1.ManagedFieldsOperationApply {
				return fmt.Errorf("managedFields keep the operator's %s entry", mf.Operation)
			}
		}
		return nil
	})

	// A Service port edited by hand: put back (an apply alone failed here: the edited entry
	// is another key, and the API server refused a second port named "http").
	svc := &corev1.Service{}
	if err := k8s.Get(bg, key(ns, "heal-api"), svc); err != nil {
		t.Fatal(err)
	}
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Name == "http" {
			svc.Spec.Ports[i].Port = 8081
		}
	}
	if err := k8s.Update(bg, svc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Service heal-api port restored", func() error {
		fresh := &corev1.Service{}
		if err := k8s.Get(bg, key(ns, "heal-api"), fresh); err != nil {
			return err
		}
		ports := map[string]int32{}
		for _, p := range fresh.Spec.Ports {
			ports[p.Name] = p.Port
		}
		if len(ports) != 2 || ports["http"] != 8080 || ports["metrics"] != 9090 {
			return fmt.Errorf("ports %v", ports)
		}
		return nil
	})
}

func mustFirstNetworkPolicy(t *testing.T, ns string) string {
	t.Helper()
	list := &networkingv1.NetworkPolicyList{}
	if err := k8s.List(bg, list, client.InNamespace(ns)); err != nil || len(list.Items) == 0 {
		t.Fatalf("no NetworkPolicy in %s: %v", ns, err)
	}
	return list.Items[0].Name
}

func testQuietAtRest(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "quiet"))
	makeReady(t, ns, "quiet")
	// Let the events of the last status writes settle into one more pass.
	reconcileDirectly(t, ns, "quiet", 1)
	operatorWrites.settle(t, ns)

	before := resourceVersions(t, ns, "quiet")
	if len(before) < 12 {
		t.Fatalf("only %d objects found: %v", len(before), before)
	}
	// The passes run in a new reconciler, which starts with no memory of what was applied:
	// as after a restart of the operator. Every child is read and found as desired (the
	// monitoring kinds through the schemas the API server publishes for their CRDs), so no
	// request writes anything.
	mark := operatorWrites.mark()
	res := reconcileDirectly(t, ns, "quiet", 5)
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("a restarted operator wrote at rest: %s", w)
	}
	if res.RequeueAfter != 0 {
		t.Errorf("a Ready stack asks to be requeued after %s", res.RequeueAfter)
	}
	sameObjects(t, before, resourceVersions(t, ns, "quiet"))
}

// testStatusWritesNotApplied: the autoscaler writes its status every 15 s, the disruption
// budget's controller whenever a pod's readiness changes, the StatefulSet and Deployment
// controllers their pods' progress, prometheus-operator a ServiceMonitor's bindings; a resync
// after such writes must send nothing (they changed the resourceVersion, not what the
// operator applied).
func testStatusWritesNotApplied(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "st", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4}
	}))
	makeReady(t, ns, "st")
	req := ctrl.Request{NamespacedName: key(ns, "st")}
	mgrMu.Lock()
	r, cache := currentReconciler, currentMgr.GetCache()
	mgrMu.Unlock()
	pass := func() {
		t.Helper()
		if _, err := r.Reconcile(bg, req); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
	}
	pass() // settle: the manager's passes may still be catching up with the last status writes

	// The controllers of Kubernetes write the statuses (envtest runs none), and the
	// operator's cache sees them before the next pass.
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	pdb := &policyv1.PodDisruptionBudget{}
	sts := &appsv1.StatefulSet{}
	dep := &appsv1.Deployment{}
	for _, obj := range []client.Object{hpa, pdb, sts, dep} {
		name := "st-api"
		if obj == sts {
			name = "st-postgres"
		}
		if err := k8s.Get(bg, key(ns, name), obj); err != nil {
			t.Fatal(err)
		}
	}
	hpa.Status = autoscalingv2.HorizontalPodAutoscalerStatus{CurrentReplicas: 2, DesiredReplicas: 3, LastScaleTime: ptr.To(metav1.Now())}
	pdb.Status = policyv1.PodDisruptionBudgetStatus{ObservedGeneration: pdb.Generation, CurrentHealthy: 2, DesiredHealthy: 1, ExpectedPods: 2, DisruptionsAllowed: 1}
	sm := &unstructured.Unstructured{}
	sm.SetGroupVersionKind(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"})
	if err := k8s.Get(bg, key(ns, "st-api"), sm); err != nil {
		t.Fatal(err)
	}
	sm.Object["status"] = map[string]any{"bindings": []any{map[string]any{
		"group": "monitoring.coreos.com", "resource": "prometheuses", "name": "k8s", "namespace": "monitoring",
		"conditions": []any{map[string]any{"type": "Accepted", "status": "True", "lastTransitionTime": "2026-11-29T00:00:00Z"}},
	}}}
	sts.Status.CurrentRevision, sts.Status.UpdateRevision = "st-postgres-2", "st-postgres-2"
	dep.Status.Conditions[0].LastUpdateTime = metav1.NewTime(time.Now().Add(time.Second))
	// The StatefulSet's and the Deployment's status writes wake the manager too: whichever
	// pass comes first, the manager's or the two below, must send nothing.
	operatorWrites.settle(t, ns)
	mark := operatorWrites.mark()
	for _, obj := range []client.Object{hpa, pdb, sts, dep, sm} {
		if err := k8s.Status().Update(bg, obj); err != nil {
			t.Fatal(err)
		}
		want, cached := obj.GetResourceVersion(), obj.DeepCopyObject().(client.Object)
		eventually(t, "the cache sees the status write", func() error {
			if err := cache.Get(bg, client.ObjectKeyFromObject(obj), cached); err != nil {
				return err
			}
			if cached.GetResourceVersion() != want {
				return fmt.Errorf("resourceVersion %s, want %s", cached.GetResourceVersion(), want)
			}
			return nil
		})
	}

	pass()
	pass()
	if w := operatorWrites.since(mark, ns); len(w) > 0 {
		t.Errorf("a resync after status writes sent %d writes: %v", len(w), w)
	}
}

func secretData(t *testing.T, ns string, names ...string) map[string]map[string][]byte {
	t.Helper()
	out := map[string]map[string][]byte{}
	for _, n := range names {
		s := &corev1.Secret{}
		if err := k8s.Get(bg, key(ns, n), s); err != nil {
			t.Fatalf("secret %s: %v", n, err)
		}
		out[n] = s.Data
	}
	return out
}

func sameSecretData(t *testing.T, when string, a, b map[string]map[string][]byte) {
	t.Helper()
	for name, data := range a {
		for k, v := range data {
			if !bytes.Equal(b[name][k], v) {
				t.Errorf("%s: secret %s key %s changed", when, name, k)
			}
		}
		if len(b[name]) != len(data) {
			t.Errorf("%s: secret %s has keys %d, was %d", when, name, len(b[name]), len(data))
		}
	}
}

func testSecretsStable(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "sec"))
	makeReady(t, ns, "sec")
	names := []string{"sec-postgres-credentials", "sec-jwt", "sec-admin"}
	first := secretData(t, ns, names...)
	for n, d := range first {
		if len(d) == 0 {
			t.Fatalf("secret %s is empty", n)
		}
		for k, v := range d {
			if k != "user" && len(v) < 16 {
				t.Errorf("secret %s key %s is only %d bytes", n, k, len(v))
			}
		}
	}

	reconcileDirectly(t, ns, "sec", 10)
	sameSecretData(t, "after 10 passes", first, secretData(t, ns, names...))

	// A user's edit is kept.
	admin := &corev1.Secret{}
	if err := k8s.Get(bg, key(ns, "sec-admin"), admin); err != nil {
		t.Fatal(err)
	}
	for k := range admin.Data {
		admin.Data[k] = []byte("a-password-the-user-chose-123")
	}
	if err := k8s.Update(bg, admin); err != nil {
		t.Fatal(err)
	}
	edited := secretData(t, ns, "sec-admin")
	reconcileDirectly(t, ns, "sec", 3)

	// An operator restart regenerates nothing.
	stopManager()
	if err := startManager(); err != nil {
		t.Fatalf("restart manager: %v", err)
	}
	updateStack(t, ns, "sec", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 3 })
	s := getStack(t, ns, "sec")
	eventually(t, "restarted operator observes the new generation", func() error {
		cur := getStack(t, ns, "sec")
		if cur.Status.ObservedGeneration != s.Generation {
			return fmt.Errorf("observedGeneration %d, want %d", cur.Status.ObservedGeneration, s.Generation)
		}
		return nil
	})
	sameSecretData(t, "after a restart", map[string]map[string][]byte{"sec-postgres-credentials": first["sec-postgres-credentials"], "sec-jwt": first["sec-jwt"]},
		secretData(t, ns, "sec-postgres-credentials", "sec-jwt"))
	sameSecretData(t, "user's edit after a restart", edited, secretData(t, ns, "sec-admin"))

	// The runtime rolls when a Secret it reads changes: the hash moved.
	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "sec-api"), dep); err != nil {
		t.Fatal(err)
	}
	if len(dep.Spec.Template.Annotations) == 0 {
		t.Fatal("no config hash annotation")
	}
}

func testImageChangeWaitsForMigration(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mig"))
	makeReady(t, ns, "mig")
	firstJob := waitMigrationJob(t, ns, "mig", "registry.example.com/tradingd:v1")
	apiImage := func() string {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "mig-api"), d); err != nil {
			t.Fatal(err)
		}
		return d.Spec.Template.Spec.Containers[0].Image
	}

	updateStack(t, ns, "mig", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = "registry.example.com/tradingd:v2" })
	job := waitMigrationJob(t, ns, "mig", "registry.example.com/tradingd:v2")
	if job.Name == firstJob.Name || !strings.HasPrefix(job.Name, "mig-migrate-") {
		t.Fatalf("new image's Job %s (first was %s)", job.Name, firstJob.Name)
	}
	s := waitCondition(t, ns, "mig", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning)
	if s.Status.Phase != tradingv1alpha1.PhaseMigrating {
		t.Errorf("phase %q while migrating", s.Status.Phase)
	}
	if res := reconcileDirectly(t, ns, "mig", 3); res.RequeueAfter == 0 {
		t.Errorf("waiting on a running Job does not requeue")
	}
	if img := apiImage(); img != "registry.example.com/tradingd:v1" {
		t.Fatalf("runtime moved to %s before its migration succeeded", img)
	}

	if v := getStack(t, ns, "mig").Status.SchemaVersion; v != "v1" {
		t.Errorf("SCHEMA for an image that reported no version is %q, want its tag v1", v)
	}
	// The v2 image reports its schema version in the migrate container's termination
	// message (a failed attempt's log tail, listed first, does not count); the status shows
	// it, not the tag.
	migrationPod(t, job, 1, 1, "database schema at version 3\nmigrate: 00004 failed: connection reset by peer\n")
	migrationPod(t, job, 2, 0, "database schema at version 9\n")
	finishJob(t, ns, job.Name, true)
	eventually(t, "runtime moves to v2", func() error {
		if img := apiImage(); img != "registry.example.com/tradingd:v2" {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
	markDeploymentReady(t, ns, "mig-api")
	s = waitCondition(t, ns, "mig", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if s.Status.Migration.Image != "registry.example.com/tradingd:v2" || s.Status.Runtime.Image != "registry.example.com/tradingd:v2" {
		t.Errorf("status after migration: %+v", s.Status)
	}
	if s.Status.SchemaVersion != "9" {
		t.Errorf("SCHEMA is %q after the migration Job reported version 9", s.Status.SchemaVersion)
	}
	eventually(t, "old migration Job removed", func() error {
		if err := k8s.Get(bg, key(ns, firstJob.Name), &batchv1.Job{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("old Job %s still there (%v)", firstJob.Name, err)
		}
		return nil
	})
}

func testFailedMigration(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "fail"))
	makeReady(t, ns, "fail")

	updateStack(t, ns, "fail", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = "registry.example.com/tradingd:broken" })
	job := waitMigrationJob(t, ns, "fail", "registry.example.com/tradingd:broken")
	finishJob(t, ns, job.Name, false)

	s := waitCondition(t, ns, "fail", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, tradingv1alpha1.ReasonMigrationFailed)
	if c := condition(s, tradingv1alpha1.ConditionMigrationsSucceeded); !strings.Contains(c.Message, "BackoffLimitExceeded") {
		t.Errorf("MigrationsSucceeded message %q does not carry the Job's reason", c.Message)
	}
	msg := condition(s, tradingv1alpha1.ConditionMigrationsSucceeded).Message
	if !strings.Contains(msg, job.Name) || !strings.Contains(msg, "backoff limit") {
		t.Errorf("MigrationsSucceeded message %q does not carry the Job's name and message", msg)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseDegraded {
		t.Errorf("phase %q after a failed migration with the old runtime serving", s.Status.Phase)
	}
	if c := condition(s, tradingv1alpha1.ConditionDegraded); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Degraded = %+v", c)
	}
	reconcileDirectly(t, ns, "fail", 2)
	d := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "fail-api"), d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/tradingd:v1" {
		t.Errorf("runtime moved to %s after a failed migration", img)
	}

	// Back to the migrated image; its Job deleted by hand comes back and, run again, fails:
	// the conditions say so (the schema is migrated, so the stack keeps serving).
	updateStack(t, ns, "fail", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = "registry.example.com/tradingd:v1" })
	waitCondition(t, ns, "fail", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	done := waitMigrationJob(t, ns, "fail", "registry.example.com/tradingd:v1")
	if err := k8s.Delete(bg, done, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the migration Job re-created", func() error {
		j := &batchv1.Job{}
		if err := k8s.Get(bg, key(ns, done.Name), j); err != nil {
			return err
		}
		if j.UID == done.UID {
			return fmt.Errorf("not deleted yet")
		}
		return nil
	})
	finishJob(t, ns, done.Name, false)
	eventually(t, "MigrationsSucceeded says the re-run failed", func() error {
		c := condition(getStack(t, ns, "fail"), tradingv1alpha1.ConditionMigrationsSucceeded)
		if c == nil || !strings.Contains(c.Message, "failed") {
			return fmt.Errorf("MigrationsSucceeded %+v", c)
		}
		return nil
	})
}

func testRetainDataOnDelete(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "keep"))
	createStack(t, newStack(ns, "drop", func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(false) }))
	keep := makeReady(t, ns, "keep")
	drop := makeReady(t, ns, "drop")

	policy := func(name string) *appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, name+"-postgres"), sts); err != nil {
			t.Fatal(err)
		}
		if len(sts.Spec.VolumeClaimTemplates) == 0 {
			t.Errorf("StatefulSet %s-postgres has no PVC template", name)
		}
		return sts.Spec.PersistentVolumeClaimRetentionPolicy
	}
	if p := policy("keep"); p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("retained stack's PVC policy = %+v, want WhenDeleted Retain", p)
	}
	if p := policy("drop"); p == nil || p.WhenDeleted != appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
		t.Errorf("non-retained stack's PVC policy = %+v, want WhenDeleted Delete", p)
	}
	secretsOf := func(name string) []*corev1.Secret {
		var out []*corev1.Secret
		for _, n := range []string{"-postgres-credentials", "-jwt", "-admin"} {
			s := &corev1.Secret{}
			if err := k8s.Get(bg, key(ns, name+n), s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return out
	}
	for _, s := range secretsOf("keep") {
		if len(s.OwnerReferences) != 0 {
			t.Errorf("retained Secret %s has owner references %v: the garbage collector would delete it", s.Name, s.OwnerReferences)
		}
		if s.Labels["app.kubernetes.io/instance"] != "keep" || s.Labels["app.kubernetes.io/managed-by"] != "trading-operator" {
			t.Errorf("retained Secret %s not labelled: %v", s.Name, s.Labels)
		}
	}
	for _, s := range secretsOf("drop") {
		if !hasControllerRef(s, drop) {
			t.Errorf("Secret %s of a non-retaining stack has no owner reference: the garbage collector would keep it", s.Name)
		}
	}

	// Switching retention on takes the owner references off again.
	updateStack(t, ns, "drop", func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(true) })
	eventually(t, "owner references removed", func() error {
		for _, s := range secretsOf("drop") {
			if len(s.OwnerReferences) != 0 {
				return fmt.Errorf("%s still owned", s.Name)
			}
		}
		if p := policy("drop"); p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			return fmt.Errorf("PVC policy %+v", p)
		}
		return nil
	})

	// Deleting the retained stack leaves the Secrets unowned and intact.
	before := secretData(t, ns, "keep-postgres-credentials", "keep-jwt", "keep-admin")
	if err := k8s.Delete(bg, keep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "stack gone", func() error {
		if err := k8s.Get(bg, key(ns, "keep"), &tradingv1alpha1.TradingStack{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	for _, s := range secretsOf("keep") {
		if len(s.OwnerReferences) != 0 {
			t.Errorf("Secret %s owned after the stack's deletion", s.Name)
		}
	}
	sameSecretData(t, "after deletion", before, secretData(t, ns, "keep-postgres-credentials", "keep-jwt", "keep-admin"))

	// A stack created again under the same name reuses the retained credentials.
	createStack(t, newStack(ns, "keep"))
	waitCondition(t, ns, "keep", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, "")
	sameSecretData(t, "after re-creation", before, secretData(t, ns, "keep-postgres-credentials", "keep-jwt", "keep-admin"))
	_ = keep
}

func testBrokenStackDoesNotBlockOthers(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "broken", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{
			ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "no-such-secret", Key: "dsn"},
		}
	}))
	createStack(t, newStack(ns, "good"))

	s := waitCondition(t, ns, "broken", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
	msg := condition(s, tradingv1alpha1.ConditionDatabaseReady).Message
	if !strings.Contains(msg, "no-such-secret") {
		t.Errorf("DatabaseReady message %q does not name the Secret", msg)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseFailed {
		t.Errorf("broken stack's phase %q", s.Status.Phase)
	}
	// The steps after the database that build on it did not run; their conditions are there
	// all the same, Unknown, saying they were not checked, for this generation. Monitoring
	// builds on the spec alone: it is judged all the same.
	for _, ct := range []string{tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ConditionMigrationsSucceeded,
		tradingv1alpha1.ConditionRuntimeAvailable} {
		c := condition(s, ct)
		if c == nil || c.Status != metav1.ConditionUnknown || c.Reason != tradingv1alpha1.ReasonNotChecked ||
			c.Message == "" || c.ObservedGeneration != s.Generation {
			t.Errorf("%s of a stack stopped at its database: %+v", ct, c)
		}
	}
	if c := condition(s, tradingv1alpha1.ConditionMonitoringReady); c == nil || c.Reason == tradingv1alpha1.ReasonNotChecked ||
		c.ObservedGeneration != s.Generation {
		t.Errorf("MonitoringReady of a stack stopped at its database: %+v", c)
	}
	if err := k8s.Get(bg, key(ns, "broken-postgres"), &appsv1.StatefulSet{}); !apierrors.IsNotFound(err) {
		t.Errorf("external-database stack got a StatefulSet (%v)", err)
	}
	makeReady(t, ns, "good")

	// Repeated passes on the broken stack are not errors, and ask for no timer: the
	// Secret's creation is what brings the next pass.
	if res := reconcileDirectly(t, ns, "broken", 3); res.RequeueAfter != 0 {
		t.Errorf("a stack waiting for its user's Secret requeues after %s", res.RequeueAfter)
	}

	// The user creates the Secret: the stack proceeds.
	dsn := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no-such-secret"},
		StringData: map[string]string{"dsn": "postgres://app:pw@db.example.com:5432/trading?sslmode=require"},
	}
	if err := k8s.Create(bg, dsn); err != nil {
		t.Fatal(err)
	}
	// No direct reconcile and no timer: the watch on users' Secrets brings the next pass.
	waitCondition(t, ns, "broken", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase)
	waitMigrationJob(t, ns, "broken", "registry.example.com/tradingd:v1")
}

func testPaused(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "still"))
	makeReady(t, ns, "still")
	updateStack(t, ns, "still", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Paused = true
		s.Spec.Runtime.Replicas = 5
	})
	waitCondition(t, ns, "still", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
	svc := &corev1.Service{}
	if err := k8s.Get(bg, key(ns, "still-api"), svc); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(bg, svc); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "still", 3)
	if err := k8s.Get(bg, key(ns, "still-api"), &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Errorf("paused stack's Service was recreated (%v)", err)
	}
	d := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "still-api"), d); err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas != nil && *d.Spec.Replicas == 5 {
		t.Errorf("paused stack's replicas changed")
	}

	updateStack(t, ns, "still", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = false })
	waitFor(t, &corev1.Service{}, ns, "still-api")
	eventually(t, "replicas applied after unpausing", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "still-api"), d); err != nil {
			return err
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 5 {
			return fmt.Errorf("replicas %v", d.Spec.Replicas)
		}
		return nil
	})
}

func testPolicyFollowsSpec(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "pol", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 5}
	}))
	makeReady(t, ns, "pol")
	waitFor(t, &autoscalingv2.HorizontalPodAutoscaler{}, ns, "pol-api")
	waitFor(t, &policyv1.PodDisruptionBudget{}, ns, "pol-api")

	gen := runtimeGeneration(t, ns, "pol")
	updateStack(t, ns, "pol", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = nil
		s.Spec.Runtime.Replicas = 1
		s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled
	})
	// The managed Redis goes once the runtime has rolled out without it.
	waitRuntimeTemplate(t, ns, "pol", gen)
	markDeploymentReady(t, ns, "pol-api")
	eventually(t, "HPA, PDB and managed Redis removed", func() error {
		for _, o := range []client.Object{
			&autoscalingv2.HorizontalPodAutoscaler{}, &policyv1.PodDisruptionBudget{},
		} {
			if err := k8s.Get(bg, key(ns, "pol-api"), o); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%T still there (%v)", o, err)
			}
		}
		if err := k8s.Get(bg, key(ns, "pol-redis"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("redis Deployment still there (%v)", err)
		}
		return nil
	})
	waitCondition(t, ns, "pol", tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheDisabled)

	// The external database is another database: the same image's migration runs again
	// for it (same Job name, new run), and the stack says so until it succeeded.
	gen = runtimeGeneration(t, ns, "pol")
	moveToExternalDatabase(t, ns, "pol", "external-db", "postgres://app:pw@db.example.com:5432/trading?sslmode=require")
	waitCondition(t, ns, "pol", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase)
	job := waitExternalMigrationJob(t, ns, "pol", "external-db")
	s := waitCondition(t, ns, "pol", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning)
	if s.Status.Migration.Database != "managed" {
		t.Errorf("status.migration.database %q while the external one migrates, want managed", s.Status.Migration.Database)
	}
	finishJob(t, ns, job.Name, true)
	s = waitCondition(t, ns, "pol", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionTrue, "")
	if s.Status.Migration.Database != job.Annotations[databaseAnnotation] {
		t.Errorf("status.migration.database %q, want %q", s.Status.Migration.Database, job.Annotations[databaseAnnotation])
	}

	// Migrated, and the runtime rolled out onto it: the managed database is removed (its
	// volume follows the retention policy), and its NetworkPolicy.
	waitRuntimeTemplate(t, ns, "pol", gen)
	markDeploymentReady(t, ns, "pol-api")
	eventually(t, "managed PostgreSQL removed", func() error {
		if err := k8s.Get(bg, key(ns, "pol-postgres"), &appsv1.StatefulSet{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("StatefulSet still there (%v)", err)
		}
		if err := k8s.Get(bg, key(ns, "pol-postgres"), &corev1.Service{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("Service still there (%v)", err)
		}
		nps := &networkingv1.NetworkPolicyList{}
		if err := k8s.List(bg, nps, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(nps.Items) != 0 {
			return fmt.Errorf("%d NetworkPolicies left", len(nps.Items))
		}
		return nil
	})
	waitCondition(t, ns, "pol", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

func testValidationRules(t *testing.T) {
	ns := newNamespace(t)
	refused := func(what string, s *tradingv1alpha1.TradingStack, wantMsg string) {
		t.Helper()
		err := k8s.Create(bg, s)
		if err == nil {
			t.Errorf("%s: accepted", what)
			_ = k8s.Delete(bg, s)
			return
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("%s: error %v, want Invalid mentioning %q", what, err, wantMsg)
		}
	}
	refused("managed and external", newStack(ns, "v1", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{}
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "x", Key: "dsn"}}
	}), "spec.postgres.managed and spec.postgres.external are mutually exclusive")
	refused("external without a secret name", newStack(ns, "v2", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{}
	}), "spec.postgres.external.connectionSecretRef.name")
	refused("autoscaling min > max", newStack(ns, "v3", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 5, MaxReplicas: 2}
	}), "spec.runtime.autoscaling.minReplicas must be less than or equal to spec.runtime.autoscaling.maxReplicas")
	// minReplicas left out is 2 by the schema's default: a maxReplicas of 1 alone is refused
	// for a field its author did not write, so the message says where the 2 comes from.
	refused("autoscaling max below the default min", newStack(ns, "v3d", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MaxReplicas: 1}
	}), "spec.runtime.autoscaling.maxReplicas (minReplicas defaults to 2)")
	refused("external redis without address", newStack(ns, "v4", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Mode = tradingv1alpha1.RedisExternal
	}), "spec.redis.address is required when spec.redis.mode is external")
	refused("redis tls on the managed redis", newStack(ns, "v4t", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.TLS = &tradingv1alpha1.RedisTLS{Enabled: true}
	}), "spec.redis.tls is for spec.redis.mode external only")
	refused("redis tls CA without tls", newStack(ns, "v4u", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			TLS: &tradingv1alpha1.RedisTLS{CASecretRef: &tradingv1alpha1.SecretKeyReference{Name: "ca", Key: "ca.crt"}}}
	}), "spec.redis.tls.caSecretRef needs spec.redis.tls.enabled: true")
	refused("trusted proxy not a CIDR", newStack(ns, "v5", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.TrustedProxies = []string{"not-a-cidr"}
	}), "spec.runtime.trustedProxies must contain only CIDRs")
	refused("zero storage", newStack(ns, "v6", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "0"}}
	}), "spec.postgres.managed.storage.size must be a positive quantity")
	refused("cache lifetime over a day", newStack(ns, "v7", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Cache.SummaryTTL = "48h" // tradingd would refuse to start with it
	}), "spec.runtime.cache.summaryTTL must be more than 0 and at most 24h")
	refused("autoscaling without a cpu request", newStack(ns, "v30", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4}
		s.Spec.Runtime.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}}
	}), "spec.runtime.resources needs a cpu request (or limit) when spec.runtime.autoscaling is set")
	refused("cache lifetime of 0", newStack(ns, "v8", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Cache.PositionsTTL = "0s" // tradingd refuses it: the cache cannot be turned off
	}), "spec.runtime.cache.positionsTTL must be more than 0 and at most 24h")
	// Values tradingd would refuse at start (exit 2), refused here instead of crash-looping.
	refused("max quantity 0", newStack(ns, "v9", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Limits.MaxQuantity = amount("0.00")
	}), "spec.runtime.limits.maxQuantity must be more than 0")
	// A value the field's pattern refuses is refused with that message alone: the CEL rules
	// that read the value (a port, a duration) do not add a type conversion error.
	for i, bad := range []func(*tradingv1alpha1.TradingStack){
		func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "redis.example.com"}
		},
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Auth.AccessTokenTTL = "1d" },
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Auth.RefreshTokenTTL = "1d" },
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Cache.PositionsTTL = "1d" },
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Cache.SummaryTTL = "1d" },
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Pool.MaxConnLifetime = "1d" },
		func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Pool.HealthCheckPeriod = "1d" },
	} {
		err := k8s.Create(bg, newStack(ns, fmt.Sprintf("pattern%d", i), bad))
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "should match") || strings.Contains(err.Error(), "evaluating rule") {
			t.Errorf("pattern case %d: %v, want the pattern's message alone", i, err)
		}
	}
	refused("redis port out of range", newStack(ns, "v16", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "redis:99999"}
	}), "spec.redis.address must end with a port from 1 to 65535")
	refused("max daily loss 0", newStack(ns, "v15", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.MaxDailyLoss = amount("0")
	}), "spec.runtime.maxDailyLoss must be more than 0")
	refused("max quantity x max price", newStack(ns, "v17", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Limits.MaxQuantity, s.Spec.Runtime.Limits.MaxPrice = amount("999999999999"), amount("999999999999")
	}), "spec.runtime.limits.maxQuantity x maxPrice must be less than 1e22")
	// Just at 1e22 exactly (2e10 x 5e11), which the doubles round below: tradingd refuses it,
	// so the API server must too.
	refused("max quantity x max price at the bound", newStack(ns, "v18", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Limits.MaxQuantity, s.Spec.Runtime.Limits.MaxPrice = amount("20000000000.0000018"), amount("499999999999.999969")
	}), "spec.runtime.limits.maxQuantity x maxPrice must be less than 1e22")
	// The decimal fields take a number as well as a string: `maxPrice: 5000` in YAML is a
	// number. A floating-point number (2500.5 unquoted) is not exact, and is refused.
	raw := func(name, runtime string) error {
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON([]byte(`{"apiVersion":"trading.findmy.io/v1alpha1","kind":"TradingStack",
			"metadata":{"name":"` + name + `","namespace":"` + ns + `"},"spec":{"paused":true,"runtime":` + runtime + `}}`)); err != nil {
			t.Fatal(err)
		}
		return k8s.Create(bg, u)
	}
	if err := raw("ints", `{"limits":{"maxQuantity":250,"maxPrice":2147483647},"maxDailyLoss":2500}`); err != nil {
		t.Errorf("decimal fields written as integers: %v", err)
	} else if st := getStack(t, ns, "ints"); tradingv1alpha1.Amount(st.Spec.Runtime.Limits.MaxQuantity) != "250" ||
		tradingv1alpha1.Amount(st.Spec.Runtime.Limits.MaxPrice) != "2147483647" || tradingv1alpha1.Amount(st.Spec.Runtime.MaxDailyLoss) != "2500" {
		t.Errorf("integers stored as %+v, maxDailyLoss %v", st.Spec.Runtime.Limits, st.Spec.Runtime.MaxDailyLoss)
	} else if data := desiredRuntimeConfigMap(st.WithDefaults()).Data; data["MAX_QUANTITY"] != "250" || data["MAX_PRICE"] != "2147483647" || data["MAX_DAILY_LOSS"] != "2500" {
		t.Errorf("integers given to tradingd as %q, %q, %q", data["MAX_QUANTITY"], data["MAX_PRICE"], data["MAX_DAILY_LOSS"])
	}
	// Autoscaling with the operator's resources, or with a cpu limit (the request defaults to
	// it), has a cpu request to scale on.
	for name, runtime := range map[string]string{
		"hpa-default-resources": `{"autoscaling":{"minReplicas":2,"maxReplicas":4}}`,
		"hpa-cpu-limit":         `{"autoscaling":{"minReplicas":2,"maxReplicas":4},"resources":{"limits":{"cpu":"1","memory":"256Mi"}}}`,
	} {
		if err := raw(name, runtime); err != nil {
			t.Errorf("%s %s: %v", name, runtime, err)
		}
	}
	for _, c := range []struct{ name, runtime, want string }{
		{"float", `{"maxDailyLoss":2500.5}`, "spec.runtime.maxDailyLoss"},
		{"zero", `{"limits":{"maxPrice":0}}`, "spec.runtime.limits.maxPrice must be more than 0"},
		{"negative", `{"limits":{"maxQuantity":-5}}`, "spec.runtime.limits.maxQuantity must be more than 0"},
		// A whole number past IntOrString's int32 would be stored and then fail every Go
		// client's list of stacks (the operator's cache, for every stack): refused.
		{"above-int32", `{"limits":{"maxPrice":2147483648}}`, "spec.runtime.limits.maxPrice above 2147483647 must be written as a string, such as \"5000000000\""},
		{"too-large", `{"maxDailyLoss":1000000000000}`, "spec.runtime.maxDailyLoss above 2147483647 must be written as a string"},
		{"product", `{"limits":{"maxQuantity":"999999999999","maxPrice":"999999999999"}}`, "spec.runtime.limits.maxQuantity x maxPrice must be less than 1e22"},
	} {
		err := raw("num-"+c.name, c.runtime)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: %v, want Invalid mentioning %q", c.name, c.runtime, err, c.want)
		}
	}
	// A string that is no decimal gets the one message that says what is wanted.
	err := k8s.Create(bg, newStack(ns, "v19", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Limits.MaxPrice = amount("1e6") }))
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.runtime.limits.maxPrice must be a decimal with at most 12 digits before the point and 8 after") ||
		strings.Contains(err.Error(), "more than 0") || strings.Contains(err.Error(), "evaluating rule") {
		t.Errorf("maxPrice 1e6: %v, want the format's message alone", err)
	}
	refused("max price 0", newStack(ns, "v10", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Limits.MaxPrice = amount("0")
	}), "spec.runtime.limits.maxPrice must be more than 0")
	refused("access token lifetime 0", newStack(ns, "v11", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Auth.AccessTokenTTL = "0s"
	}), "spec.runtime.auth.accessTokenTTL must be at least 1s")
	// tradingd refuses a token lifetime under a second (tokens carry whole seconds).
	refused("refresh token lifetime under a second", newStack(ns, "v31", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Auth.RefreshTokenTTL = "500ms"
	}), "spec.runtime.auth.refreshTokenTTL must be at least 1s")
	refused("pool health check 0", newStack(ns, "v12", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Pool.HealthCheckPeriod = "0m"
	}), "spec.postgres.pool.healthCheckPeriod must be more than 0")
	refused("pool min > max", newStack(ns, "v13", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Pool.MaxConns = 5
		s.Spec.Postgres.Pool.MinConns = ptr.To(int32(10))
	}), "spec.postgres.pool.minConns must be less than or equal to spec.postgres.pool.maxConns")
	refused("pool min > default max", newStack(ns, "v14", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Pool.MinConns = ptr.To(int32(31)) // maxConns defaults to 30
	}), "spec.postgres.pool.minConns must be less than or equal to spec.postgres.pool.maxConns")

	// Transition rules: storage may only grow; the class is immutable once set.
	createStack(t, newStack(ns, "grow", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "10Gi", StorageClassName: "fast"}}
	}))
	update := func(what string, mutate func(*tradingv1alpha1.TradingStack), wantMsg string) {
		t.Helper()
		s := getStack(t, ns, "grow")
		mutate(s)
		err := k8s.Update(bg, s)
		if wantMsg == "" {
			if err != nil {
				t.Errorf("%s: refused: %v", what, err)
			}
			return
		}
		if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("%s: error %v, want Invalid mentioning %q", what, err, wantMsg)
		}
	}
	update("shrink storage", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.Size = "5Gi" },
		"spec.postgres.managed.storage.size may only grow")
	update("change storage class", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.StorageClassName = "slow" },
		"spec.postgres.managed.storage.storageClassName is immutable once set")
	update("grow storage", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.Size = "20Gi" }, "")
	// Removing managed and adding it back smaller would slip past the transition rules.
	update("remove managed", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed = nil },
		"spec.postgres.managed cannot be removed")

	// Defaults come from the schema: an empty spec is filled in.
	createStack(t, &tradingv1alpha1.TradingStack{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "empty"}})
	e := getStack(t, ns, "empty")
	if e.Spec.Runtime.Replicas != 2 || e.Spec.Redis.Mode != tradingv1alpha1.RedisManaged || e.Spec.RetainDataOnDelete == nil || !*e.Spec.RetainDataOnDelete ||
		e.Spec.Runtime.RateLimits.Login == nil || *e.Spec.Runtime.RateLimits.Login != 5 {
		t.Errorf("schema defaults not applied: %+v", e.Spec)
	}
	// A stack made without spec.postgres.managed has the default 10Gi volume: a size given
	// later may not be smaller either.
	resize := func(size, wantMsg string) {
		t.Helper()
		s := getStack(t, ns, "empty")
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: size}}
		err := k8s.Update(bg, s)
		switch {
		case wantMsg == "" && err != nil:
			t.Errorf("size %s on a default stack: refused: %v", size, err)
		case wantMsg != "" && (err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), wantMsg)):
			t.Errorf("size %s on a default stack: error %v, want Invalid mentioning %q", size, err, wantMsg)
		}
	}
	resize("1Gi", "spec.postgres.managed.storage.size may only grow: this stack's volume has the default size, 10Gi")
	resize("10240Mi", "")
	resize("20Gi", "")
}

// testWatchNamespace runs the manager as with WATCH_NAMESPACE="A, B": stacks in
// A and B are reconciled, a stack elsewhere is left alone.
func testWatchNamespace(t *testing.T) {
	a, b, other := newNamespace(t), newNamespace(t), newNamespace(t)
	stopManagerForTest(t)
	if err := startManager(ParseWatchNamespaces(" " + a + ", " + b + ",")...); err != nil {
		t.Fatalf("start a manager for %s and %s: %v", a, b, err)
	}
	createStack(t, newStack(other, "outside"))
	createStack(t, newStack(a, "in-a"))
	createStack(t, newStack(b, "in-b"))
	makeReady(t, a, "in-a")
	makeReady(t, b, "in-b")

	// Both watched stacks went through every step; the other one, created
	// first, has not been touched.
	s := getStack(t, other, "outside")
	if len(s.Status.Conditions) != 0 || s.Status.ObservedGeneration != 0 {
		t.Errorf("stack outside WATCH_NAMESPACE was reconciled: %+v", s.Status)
	}
	if err := k8s.Get(bg, key(other, "outside-jwt"), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("stack outside WATCH_NAMESPACE got children (%v)", err)
	}
}

// testStorageGrows: a grown storage size reaches the database's claim (the
// StatefulSet's claim template cannot change), and the StatefulSet keeps
// applying cleanly.
// A spec change that drops entries the operator set itself (the Redis password's env vars,
// moving from an external Redis to none) is the apply's to remove: no patch as if they had
// been added by hand, no Reverted event.
func testSpecDropsEntries(t *testing.T) {
	ns := newNamespace(t)
	pw := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-redis"}, StringData: map[string]string{"pw": "s3cret"}}
	if err := k8s.Create(bg, pw); err != nil {
		t.Fatal(err)
	}
	// Paused, an env var is added by hand; then, in one change, the stack resumes and moves to
	// an external Redis with a password: the pass that removes the hand-added var also adds
	// the password's vars (through the apply, so that the apply can remove them again).
	createStack(t, newStack(ns, "drop"))
	makeReady(t, ns, "drop")
	updateStack(t, ns, "drop", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = true })
	waitCondition(t, ns, "drop", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "drop-api"), dep); err != nil {
		t.Fatal(err)
	}
	dep.Spec.Template.Spec.Containers[0].Env = append(dep.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "HAND", Value: "1"})
	if err := k8s.Update(bg, dep); err != nil {
		t.Fatal(err)
	}
	updateStack(t, ns, "drop", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Paused = false
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-redis", Key: "pw"}}
	})
	hasEnv := func(name string) (bool, error) {
		dep := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "drop-api"), dep); err != nil {
			return false, err
		}
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			if e.Name == name {
				return true, nil
			}
		}
		return false, nil
	}
	eventually(t, "HAND removed and REDIS_PASSWORD added", func() error {
		hand, err := hasEnv("HAND")
		if err != nil {
			return err
		}
		pw, err := hasEnv("REDIS_PASSWORD")
		if err != nil || hand || !pw {
			return fmt.Errorf("HAND %v, REDIS_PASSWORD %v (%v)", hand, pw, err)
		}
		return nil
	})
	makeReady(t, ns, "drop")
	events := waitEvent(t, ns, "Reverted", "env HAND")
	for _, e := range events.Items {
		if e.Reason == "Reverted" && (!strings.Contains(e.Message, "env HAND") || strings.Contains(e.Message, "REDIS")) {
			t.Errorf("Reverted event: %s", e.Message)
		}
	}
	updateStack(t, ns, "drop", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisDisabled}
	})
	eventually(t, "REDIS_PASSWORD gone from drop-api", func() error {
		if ok, err := hasEnv("REDIS_PASSWORD"); err != nil || ok {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	events = &corev1.EventList{}
	if err := k8s.List(bg, events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Reason == "Reverted" && !strings.Contains(e.Message, "env HAND") {
			t.Errorf("a spec change reported as a hand edit: %s", e.Message)
		}
	}
	if ok, _ := hasEnv("REDIS_URL"); ok {
		t.Error("REDIS_URL env outlived Redis being turned off")
	}
}

// A stack created without spec.postgres.managed has no stored size or class to compare with:
// the schema holds a size given later to the 10Gi default, but lets a storage class in; the
// volume keeps what it has, and DatabaseReady says the spec is not applied instead of
// pretending it holds.
func testStorageNotShrunk(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "keep"))
	makeReady(t, ns, "keep")
	// A smaller size than the default the volume was made with is refused by the API server
	// (the stack was made without spec.postgres.managed); a class is not.
	s := getStack(t, ns, "keep")
	s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "5Gi"}}
	if err := k8s.Update(bg, s); err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "may only grow") {
		t.Fatalf("shrinking the default volume: %v, want refused", err)
	}
	updateStack(t, ns, "keep", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "10Gi", StorageClassName: "fast"}}
	})
	eventually(t, "DatabaseReady says the storage spec is not applied", func() error {
		s := getStack(t, ns, "keep")
		c := condition(s, tradingv1alpha1.ConditionDatabaseReady)
		if c == nil || c.ObservedGeneration != s.Generation || !strings.Contains(c.Message, "cannot change to fast") {
			return fmt.Errorf("DatabaseReady: %+v", c)
		}
		return nil
	})
	sts := &appsv1.StatefulSet{}
	if err := k8s.Get(bg, key(ns, "keep-postgres"), sts); err != nil {
		t.Fatal(err)
	}
	if got := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage(); got.Cmp(resource.MustParse("10Gi")) != 0 {
		t.Fatalf("claim template requests %s, want the 10Gi it was created with", got)
	}

	// The claim got its class from the cluster's default, and that default is the class the
	// spec names now: nothing changes, nothing to report about the class.
	tmpl := sts.Spec.VolumeClaimTemplates[0]
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: tmpl.Name + "-keep-postgres-0"}, Spec: *tmpl.Spec.DeepCopy()}
	pvc.Spec.StorageClassName = ptr.To("fast")
	if err := k8s.Create(bg, pvc); err != nil {
		t.Fatal(err)
	}
	updateStack(t, ns, "keep", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.Size = "20Gi" })
	eventually(t, "DatabaseReady without a word on the class", func() error {
		s := getStack(t, ns, "keep")
		c := condition(s, tradingv1alpha1.ConditionDatabaseReady)
		if c == nil || c.ObservedGeneration != s.Generation || strings.Contains(c.Message, "not applied") {
			return fmt.Errorf("DatabaseReady: %+v", c)
		}
		return nil
	})
}

func testStorageGrows(t *testing.T) {
	ns := newNamespace(t)
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: "expandable-" + ns},
		Provisioner:          "example.com/disks",
		AllowVolumeExpansion: ptr.To(true),
	}
	if err := k8s.Create(bg, sc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, sc) })
	createStack(t, newStack(ns, "disk", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "1Gi", StorageClassName: sc.Name}}
	}))
	pvc := boundClaim(t, ns, "disk")
	makeReady(t, ns, "disk")

	updateStack(t, ns, "disk", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.Size = "3Gi" })
	eventually(t, "claim grows to 3Gi", func() error {
		cur := &corev1.PersistentVolumeClaim{}
		if err := k8s.Get(bg, client.ObjectKeyFromObject(pvc), cur); err != nil {
			return err
		}
		if got := cur.Spec.Resources.Requests.Storage(); got.Cmp(resource.MustParse("3Gi")) != 0 {
			return fmt.Errorf("claim requests %s", got)
		}
		return nil
	})
	s := waitCondition(t, ns, "disk", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if c := condition(s, tradingv1alpha1.ConditionProgressing); c != nil && c.Reason == tradingv1alpha1.ReasonApplyFailed {
		t.Errorf("apply failed after the size grew: %s", c.Message)
	}
}

// boundClaim makes the claim the StatefulSet controller would make for pod 0 of stack's
// database, from its template, bound at the template's size.
func boundClaim(t *testing.T, ns, stack string) *corev1.PersistentVolumeClaim {
	t.Helper()
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, stack+"-postgres")
	tmpl := sts.Spec.VolumeClaimTemplates[0]
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: tmpl.Name + "-" + sts.Name + "-0", Labels: tmpl.Labels},
		Spec:       *tmpl.Spec.DeepCopy(),
	}
	if err := k8s.Create(bg, pvc); err != nil {
		t.Fatal(err)
	}
	pvc.Status = corev1.PersistentVolumeClaimStatus{
		Phase: corev1.ClaimBound, AccessModes: pvc.Spec.AccessModes,
		Capacity: corev1.ResourceList{corev1.ResourceStorage: *tmpl.Spec.Resources.Requests.Storage()},
	}
	if err := k8s.Status().Update(bg, pvc); err != nil {
		t.Fatal(err)
	}
	return pvc
}

// testStorageGrowRefusedSaid: a storage class that does not allow volume expansion makes the
// API server refuse the grown claim. The stack must not read as matching its spec: DatabaseReady
// (still True: the database serves) says that the volume keeps its size and why, and one
// Warning event tells it, not one per pass; the claim is left as it was.
func testStorageGrowRefusedSaid(t *testing.T) {
	ns := newNamespace(t)
	sc := &storagev1.StorageClass{
		ObjectMeta:  metav1.ObjectMeta{Name: "fixed-" + ns},
		Provisioner: "example.com/disks",
	}
	if err := k8s.Create(bg, sc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, sc) })
	createStack(t, newStack(ns, "fixed", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "1Gi", StorageClassName: sc.Name}}
	}))
	pvc := boundClaim(t, ns, "fixed")
	makeReady(t, ns, "fixed")

	updateStack(t, ns, "fixed", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Managed.Storage.Size = "3Gi" })
	const said = "PersistentVolumeClaim data-fixed-postgres-0 keeps 1Gi: growing it to 3Gi was refused"
	waitConditionSays(t, ns, "fixed", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable, said)
	reconcileDirectly(t, ns, "fixed", 3)
	operatorWrites.settle(t, ns)
	var refusals []string
	for _, e := range stackEvents(t, ns, "fixed") {
		if e.Reason == "VolumeNotExpanded" {
			n := int32(1)
			if e.Series != nil {
				n = e.Series.Count
			}
			refusals = append(refusals, fmt.Sprintf("%s %q x%d", e.Type, e.Note, n))
		}
	}
	if len(refusals) != 1 || !strings.HasPrefix(refusals[0], corev1.EventTypeWarning) || !strings.HasSuffix(refusals[0], "x1") {
		t.Errorf("VolumeNotExpanded events after four passes: %v, want one Warning", refusals)
	}
	cur := &corev1.PersistentVolumeClaim{}
	if err := k8s.Get(bg, client.ObjectKeyFromObject(pvc), cur); err != nil {
		t.Fatal(err)
	}
	if got := cur.Spec.Resources.Requests.Storage(); got.Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("claim requests %s", got)
	}
}

// A spec the operator cannot apply (here an admission policy of the cluster refuses every
// change to the namespace's ConfigMaps, so a new MAX_DAILY_LOSS cannot reach the runtime's)
// is not reported as Ready for the new generation: Ready False and Progressing True with
// reason ApplyFailed naming the step, phase Degraded (still serving), and Ready again once
// the obstacle is gone.
func testFailedApplyIsReported(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "stuck"))
	makeReady(t, ns, "stuck")
	waitCondition(t, ns, "stuck", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")

	probe := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"}}
	if err := k8s.Create(bg, probe); err != nil {
		t.Fatal(err)
	}
	lift := refuseInNamespace(t, ns, "", "configmaps", admissionregistrationv1.Create, "ConfigMaps are refused here", func() error {
		return k8s.Patch(bg, probe, client.RawPatch(types.MergePatchType, []byte(`{"data":{"try":"`+rand.String(6)+`"}}`)))
	})
	updateStack(t, ns, "stuck", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.MaxDailyLoss = amount("2500") })
	s := waitCondition(t, ns, "stuck", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	progressing := condition(s, tradingv1alpha1.ConditionProgressing)
	ready := condition(s, tradingv1alpha1.ConditionReady)
	if progressing == nil || progressing.Status != metav1.ConditionTrue || progressing.Reason != tradingv1alpha1.ReasonApplyFailed ||
		!strings.Contains(ready.Message, "runtime") || ready.ObservedGeneration != s.Generation {
		t.Fatalf("after a failed apply: Progressing %+v, Ready %+v (generation %d)", progressing, ready, s.Generation)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseDegraded {
		t.Errorf("phase %s while serving the old spec, want Degraded", s.Status.Phase)
	}

	// The policy lifted: the operator applies the new setting.
	lift()
	eventually(t, "the runtime ConfigMap with the new setting", func() error {
		cur := &corev1.ConfigMap{}
		if err := k8s.Get(bg, key(ns, "stuck-runtime"), cur); err != nil {
			return err
		}
		if cur.Data["MAX_DAILY_LOSS"] != "2500" {
			return fmt.Errorf("MAX_DAILY_LOSS = %q", cur.Data["MAX_DAILY_LOSS"])
		}
		return nil
	})
	makeReady(t, ns, "stuck") // the pods rolled for the new configuration
	waitCondition(t, ns, "stuck", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// Turning autoscaling on leaves a serving Deployment at its size (it does not drop to the
// API server's default of one pod before the HPA acts, not for a moment), later passes keep the
// count the HPA chose, and turning autoscaling off applies the spec's count again. The count
// changes hands in managedFields: the operator's apply gives it up while autoscaling (a
// handover manager of the operator's keeps it until the HPA writes), and claims it again after.
func testAutoscalingKeepsReplicas(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "as", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 4 }))
	makeReady(t, ns, "as")
	replicas := func() (int32, string) {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "as-api"), d); err != nil || d.Spec.Replicas == nil {
			t.Fatalf("Deployment: %v", err)
		}
		return *d.Spec.Replicas, d.Spec.Template.Annotations[configHashAnnotation]
	}
	if n, _ := replicas(); n != 4 {
		t.Fatalf("replicas %d, want 4", n)
	}
	if owners := replicasOwners(t, ns, "as-api"); !operatorApplyOwnsReplicas(owners) {
		t.Errorf("spec.replicas owned by %v without autoscaling, want the operator's apply among them", owners)
	}
	rw := watchReplicas(t, ns, "as-api")
	updateStack(t, ns, "as", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}
	})
	waitFor(t, &autoscalingv2.HorizontalPodAutoscaler{}, ns, "as-api")
	waitCondition(t, ns, "as", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, "")
	operatorWrites.settle(t, ns)
	if seen := rw.upToNow(t); !slices.Equal(seen, []int32{4}) {
		t.Fatalf("replicas %v while autoscaling was turned on, want 4 throughout until the HPA decides", seen)
	}
	if owners := replicasOwners(t, ns, "as-api"); !slices.Equal(owners, []string{handoverFieldOwner + "/Apply"}) {
		t.Errorf("spec.replicas owned by %v once autoscaling is on, want the handover manager's alone", owners)
	}

	// The HPA scales to 5; a change that rolls the pods keeps 5.
	before := waitFor(t, &appsv1.Deployment{}, ns, "as-api")
	if err := hpaScale(bg, ns, "as-api", 5); err != nil {
		t.Fatal(err)
	}
	_, hash := replicas()
	updateStack(t, ns, "as", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.MaxDailyLoss = amount("1000") })
	eventually(t, "pods rolled for the new setting", func() error {
		if n, h := replicas(); h == hash {
			return fmt.Errorf("config hash unchanged (replicas %d)", n)
		}
		return nil
	})
	operatorWrites.settle(t, ns)
	if seen := rw.upToNow(t); !slices.Equal(seen, []int32{4, 5}) {
		t.Fatalf("replicas %v after the HPA's scale to 5 and a change, want [4 5]", seen)
	}
	// A pass whose cache has not seen the HPA's count yet keeps it too.
	if _, _, err := reconcileStale(t, ns, "as", before); err != nil {
		t.Fatal(err)
	}
	if seen := rw.upToNow(t); !slices.Equal(seen, []int32{4, 5}) {
		t.Errorf("replicas %v after a pass whose cache showed 4, want [4 5]", seen)
	}
	if owners := replicasOwners(t, ns, "as-api"); !slices.Equal(owners, []string{hpaManager + "/Update/scale"}) {
		t.Errorf("spec.replicas owned by %v after the HPA's scale, want the HPA's alone", owners)
	}

	// Off again: the spec's count, owned by the operator's apply, and the HPA gone.
	updateStack(t, ns, "as", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = nil
		s.Spec.Runtime.Replicas = 3
	})
	eventually(t, "the HPA deleted", func() error {
		if err := k8s.Get(bg, key(ns, "as-api"), &autoscalingv2.HorizontalPodAutoscaler{}); err == nil {
			return fmt.Errorf("HPA still there")
		}
		return nil
	})
	operatorWrites.settle(t, ns)
	if seen := rw.upToNow(t); !slices.Equal(seen, []int32{4, 5, 3}) {
		t.Errorf("replicas %v after autoscaling was turned off with replicas 3, want [4 5 3]", seen)
	}
	if owners := replicasOwners(t, ns, "as-api"); !slices.Equal(owners, []string{FieldOwner + "/Apply"}) {
		t.Errorf("spec.replicas owned by %v after autoscaling was turned off, want the operator's apply alone", owners)
	}
}

// A status written by an operator that did not record the migrated database: moving the
// stack to an external database still runs the migration again (judged by the Secret the
// recorded Job read its DSN from).
func testLegacyMigrationStatus(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "legacy"))
	makeReady(t, ns, "legacy")
	operatorWrites.settle(t, ns) // a pass still under way would record the database again
	s := getStack(t, ns, "legacy")
	base := s.DeepCopy()
	s.Status.Migration.Database = ""
	if err := k8s.Status().Patch(bg, s, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	moveToExternalDatabase(t, ns, "legacy", "ext", "postgres://app:pw@db.example.com:5432/trading")
	waitExternalMigrationJob(t, ns, "legacy", "ext")
}

// moveToExternalDatabase points the stack at an external database: a Secret named secret
// holding dsn under "dsn", then spec.postgres.external naming it.
func moveToExternalDatabase(t *testing.T, ns, stack, secret, dsn string) {
	t.Helper()
	if err := k8s.Create(bg, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secret},
		StringData: map[string]string{"dsn": dsn},
	}); err != nil {
		t.Fatal(err)
	}
	updateStack(t, ns, stack, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: secret, Key: "dsn"}}
	})
}

// waitExternalMigrationJob waits for the stack's migration Job of the external database whose
// DSN is in secret (its database annotation says so) and returns it.
func waitExternalMigrationJob(t *testing.T, ns, stack, secret string) *batchv1.Job {
	t.Helper()
	var job *batchv1.Job
	eventually(t, "migration Job re-created for the external database", func() error {
		for _, j := range migrationJobs(t, ns, stack) {
			if strings.HasPrefix(j.Annotations[databaseAnnotation], "external:"+secret+"/dsn:") {
				job = &j
				return nil
			}
		}
		return fmt.Errorf("no migration Job for the external database yet")
	})
	return job
}

// Monitoring is not required for Ready: when its objects are refused (here by an admission
// policy, as prometheus-operator's webhook might), MonitoringReady says why and the stack
// stays Ready.
func testMonitoringFailureKeepsReady(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	refuseServiceMonitors(t, ns, "ServiceMonitors are refused here")

	createStack(t, newStack(ns, "nomon"))
	makeReady(t, ns, "nomon")
	s := waitCondition(t, ns, "nomon", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	if c := condition(s, tradingv1alpha1.ConditionMonitoringReady); !strings.Contains(c.Message, "refused") {
		t.Errorf("MonitoringReady message %q does not say why", c.Message)
	}
	waitCondition(t, ns, "nomon", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// testCacheHoldsOnlyManaged: the operator keeps in memory only what it manages. A cluster's
// other ServiceMonitors and PrometheusRules (kube-prometheus ships dozens of large rule
// objects) and ConfigMaps are neither cached nor touched.
func testCacheHoldsOnlyManaged(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	foreign := []client.Object{
		&monitoringv1.ServiceMonitor{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses", Namespace: ns},
			Spec: monitoringv1.ServiceMonitorSpec{Endpoints: []monitoringv1.Endpoint{{Port: "web"}}}},
		&monitoringv1.PrometheusRule{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses", Namespace: ns}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses", Namespace: ns}},
	}
	for _, o := range foreign {
		if err := k8s.Create(bg, o); err != nil {
			t.Fatal(err)
		}
	}
	createStack(t, newStack(ns, "cached"))
	makeReady(t, ns, "cached")
	waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "cached-api")
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "cached-alerts")

	mgrMu.Lock()
	c := currentMgr.GetCache()
	mgrMu.Unlock()
	names := func(list client.ObjectList) []string {
		t.Helper()
		if err := c.List(bg, list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		var out []string
		_ = meta.EachListItem(list, func(o runtime.Object) error {
			out = append(out, o.(client.Object).GetName())
			return nil
		})
		slices.Sort(out)
		return out
	}
	eventually(t, "the cache holds the stack's monitoring objects and none of the others", func() error {
		for _, tc := range []struct {
			list client.ObjectList
			want []string
		}{
			{&monitoringv1.ServiceMonitorList{}, []string{"cached-api"}},
			{&monitoringv1.PrometheusRuleList{}, []string{"cached-alerts"}},
			{&corev1.ConfigMapList{}, []string{"cached-runtime"}},
		} {
			if got := names(tc.list); !slices.Equal(got, tc.want) {
				return fmt.Errorf("%T in the operator's cache: %v, want %v", tc.list, got, tc.want)
			}
		}
		return nil
	})
	// And the stacks themselves are cached whole (they carry no managed-by label).
	if got := names(&tradingv1alpha1.TradingStackList{}); !slices.Equal(got, []string{"cached"}) {
		t.Errorf("stacks in the operator's cache: %v, want [cached]", got)
	}
	for _, o := range foreign {
		fresh := o.DeepCopyObject().(client.Object)
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), fresh); err != nil {
			t.Fatalf("%T %s: %v", o, o.GetName(), err)
		}
		if fresh.GetResourceVersion() != o.GetResourceVersion() {
			t.Errorf("%T %s was changed by the operator", o, o.GetName())
		}
	}
}

// testMoveToExternalKeepsVolume: a stack that deletes its data with it (retainDataOnDelete
// false) and moves to an external database keeps its volume: an edit of the spec is not a
// deletion of the stack. The claim is released from the StatefulSet before it goes (its
// policy Delete made the StatefulSet controller own the claim, and the garbage collector
// would have deleted it with the StatefulSet).
func testMoveToExternalKeepsVolume(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mx", func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(false) }))
	makeReady(t, ns, "mx")
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, "mx-postgres")
	if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
		t.Fatalf("claim policy %+v, want WhenDeleted Delete with retainDataOnDelete false", p)
	}
	// The claim as the StatefulSet controller makes it under that policy.
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "data-mx-postgres-0", Labels: sts.Spec.VolumeClaimTemplates[0].Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts.Name, UID: sts.UID, Controller: ptr.To(true)}}},
		Spec: sts.Spec.VolumeClaimTemplates[0].Spec,
	}
	if err := k8s.Create(bg, pvc); err != nil {
		t.Fatal(err)
	}
	// Scaled to zero by hand while paused (the claim stays, owned all the same), then unpaused
	// and moved to the external database in one edit.
	updateStack(t, ns, "mx", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = true })
	waitCondition(t, ns, "mx", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
	if err := k8s.Patch(bg, objectNamed(&appsv1.StatefulSet{}, ns, "mx-postgres"), client.RawPatch(types.MergePatchType, []byte(`{"spec":{"replicas":0}}`))); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mx-ext"},
		StringData: map[string]string{"dsn": "postgres://app:pw@db.example.com:5432/trading"}}); err != nil {
		t.Fatal(err)
	}
	gen := runtimeGeneration(t, ns, "mx")
	updateStack(t, ns, "mx", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Paused = false
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "mx-ext", Key: "dsn"}}
	})
	// The managed database goes once the external one is migrated and the runtime rolled out.
	finishJob(t, ns, waitExternalMigrationJob(t, ns, "mx", "mx-ext").Name, true)
	waitRuntimeTemplate(t, ns, "mx", gen)
	markDeploymentReady(t, ns, "mx-api")
	// The StatefulSet controller (absent here) would report that it saw the Retain policy.
	eventually(t, "claim policy turned to Retain", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, "mx-postgres"), sts); err != nil {
			return err
		}
		if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			return fmt.Errorf("policy %+v", p)
		}
		if err := k8s.Get(bg, key(ns, "mx-postgres"), &appsv1.StatefulSet{}); err != nil {
			return err
		}
		return nil
	})
	if err := k8s.Get(bg, key(ns, pvc.Name), pvc); err != nil || len(pvc.OwnerReferences) != 1 {
		t.Fatalf("the claim was released before the StatefulSet controller saw the Retain policy: %v %+v", err, pvc.OwnerReferences)
	}
	// The database still runs (its StatefulSet waits for the release): its NetworkPolicy
	// stays until it is gone.
	if err := k8s.Get(bg, key(ns, "mx-postgres"), &networkingv1.NetworkPolicy{}); err != nil {
		t.Errorf("NetworkPolicy mx-postgres while the managed database still runs: %v", err)
	}
	markStatefulSetReady(t, ns, "mx-postgres")
	eventually(t, "StatefulSet mx-postgres deleted", func() error {
		err := k8s.Get(bg, key(ns, "mx-postgres"), &appsv1.StatefulSet{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	fresh := &corev1.PersistentVolumeClaim{}
	if err := k8s.Get(bg, key(ns, pvc.Name), fresh); err != nil {
		t.Fatal(err)
	}
	if len(fresh.OwnerReferences) != 0 {
		t.Errorf("the claim is still owned (the garbage collector would delete it): %+v", fresh.OwnerReferences)
	}
	if fresh.Labels["app.kubernetes.io/instance"] != "mx" {
		t.Errorf("the kept claim lost its labels: %v", fresh.Labels)
	}
}

// staleClient is the manager's client whose cache has not caught up with some objects:
// reads of them return the copies taken earlier. Writes go to the API server.
type staleClient struct {
	client.Client
	stale []client.Object
	// hidden are objects the cache does not show (yet).
	hidden []client.Object
	// statusWrites counts the status writes the API server took.
	statusWrites *atomic.Int32
}

func (c staleClient) Status() client.SubResourceWriter {
	return countedStatusWriter{c.Client.Status(), c.statusWrites}
}

type countedStatusWriter struct {
	client.SubResourceWriter
	n *atomic.Int32
}

func (w countedStatusWriter) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	err := w.SubResourceWriter.Patch(ctx, obj, patch, opts...)
	if err == nil {
		w.n.Add(1)
	}
	return err
}

func (c staleClient) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	for _, s := range c.stale {
		if reflect.TypeOf(s) == reflect.TypeOf(obj) && k == client.ObjectKeyFromObject(s) {
			reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(s.DeepCopyObject()).Elem())
			return nil
		}
	}
	for _, h := range c.hidden {
		if reflect.TypeOf(h) == reflect.TypeOf(obj) && k == client.ObjectKeyFromObject(h) {
			return apierrors.NewNotFound(schema.GroupResource{}, k.Name)
		}
	}
	return c.Client.Get(ctx, k, obj, opts...)
}

// staleReconciler is a reconciler wired like the manager's whose cache still holds the stale
// objects, and the count of the status writes it made.
func staleReconciler(stale ...client.Object) (*TradingStackReconciler, *atomic.Int32) {
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	r := NewTradingStackReconciler(mgr, 1)
	writes := &atomic.Int32{}
	r.Client = staleClient{Client: mgr.GetClient(), stale: stale, statusWrites: writes}
	return r, writes
}

// reconcileStale runs one pass of a staleReconciler.
func reconcileStale(t *testing.T, ns, name string, stale ...client.Object) (ctrl.Result, int32, error) {
	t.Helper()
	r, writes := staleReconciler(stale...)
	res, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, name)})
	return res, writes.Load(), err
}

// testMiddleStateMended: a pass that starts from the stack as it was before this reconciler's
// last status write, and finds the children as they were then (changed and changed back
// meanwhile: the runtime's pods down a moment), had nothing to write, and so left the status
// of the moment in between in place, Degraded for good (status writes wake no pass). It reads
// the stack from the API server instead, and mends the status.
func testMiddleStateMended(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mid"))
	makeReady(t, ns, "mid")
	operatorWrites.settle(t, ns)
	ready := getStack(t, ns, "mid")
	r, writes := staleReconciler(ready)

	// The reconciler's last pass saw the runtime down and wrote so.
	mid := ready.DeepCopy()
	meta.SetStatusCondition(&mid.Status.Conditions, metav1.Condition{Type: tradingv1alpha1.ConditionDegraded, Status: metav1.ConditionTrue,
		Reason: tradingv1alpha1.ReasonComponentsNotReady, Message: "the stack has served, and now not ready: RuntimeAvailable (DeploymentUnavailable)", ObservedGeneration: mid.Generation})
	mid.Status.Phase = tradingv1alpha1.PhaseDegraded
	if err := k8s.Status().Patch(bg, mid, client.MergeFrom(ready)); err != nil {
		t.Fatal(err)
	}
	r.writtenFrom.Store(key(ns, "mid").String(), ready.ResourceVersion)

	res, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, "mid")})
	if err != nil {
		t.Fatal(err)
	}
	if s := getStack(t, ns, "mid"); s.Status.Phase != tradingv1alpha1.PhaseReady || writes.Load() != 1 {
		t.Errorf("a pass on the stack from before its own last write: phase %s after it, %d status writes, %+v; want Ready, written once",
			s.Status.Phase, writes.Load(), res)
	}
}

// testStaleStackNotWritten: a pass that starts from a stack older than the last status write
// (the cache behind; status writes do not wake the operator, so nothing would mend it soon)
// writes nothing and runs again. Its patch used to be merged into the newer status: the phase
// it did not change kept the newer value beside its own conditions (CI saw "Migrating" with
// the migration succeeded and the runtime's first rollout under way).
func testStaleStackNotWritten(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "stale"))
	waitCondition(t, ns, "stale", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonWaitingForDatabase)
	old := getStack(t, ns, "stale")
	markStatefulSetReady(t, ns, "stale-postgres")
	markDeploymentReady(t, ns, "stale-redis")
	waitMigrationJob(t, ns, "stale", old.RuntimeImage())
	now := waitCondition(t, ns, "stale", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning)
	if now.Status.Phase != tradingv1alpha1.PhaseMigrating {
		t.Fatalf("phase %s while the migration runs", now.Status.Phase)
	}

	res, writes, err := reconcileStale(t, ns, "stale", old)
	if err != nil {
		t.Fatalf("a pass on a stale stack failed (a conflict is no failure): %v", err)
	}
	if writes != 0 {
		t.Errorf("a pass on a stale stack wrote its status (%d writes taken)", writes)
	}
	if res.RequeueAfter != staleStackRetry {
		t.Errorf("a pass on a stale stack asked for %+v; want to run again after %v", res, staleStackRetry)
	}
}

// testPhaseAndColumns: what `kubectl get tstack` shows. REPLICAS reads 0/N before the
// runtime's Deployment exists; a stack paused from its creation has READY Unknown; a stack
// that has served and then loses its runtime is Degraded, not back to Provisioning.
func testPhaseAndColumns(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "cols"))
	eventually(t, "REPLICAS 0/2 before the Deployment exists", func() error {
		s := getStack(t, ns, "cols")
		if s.Status.Runtime.ReplicasText != "0/2" {
			return fmt.Errorf("replicasText %q, phase %s", s.Status.Runtime.ReplicasText, s.Status.Phase)
		}
		return nil
	})
	// The runtime's first rollout, after the first migration: still Provisioning, not Degraded.
	markStatefulSetReady(t, ns, "cols-postgres")
	markDeploymentReady(t, ns, "cols-redis")
	finishJob(t, ns, waitMigrationJob(t, ns, "cols", getStack(t, ns, "cols").RuntimeImage()).Name, true)
	waitFor(t, &appsv1.Deployment{}, ns, "cols-api")
	s := waitCondition(t, ns, "cols", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionTrue, "")
	eventually(t, "the runtime's first rollout reported", func() error {
		s = getStack(t, ns, "cols")
		if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Status != metav1.ConditionFalse || c.Reason == tradingv1alpha1.ReasonWaitingForMigration {
			return fmt.Errorf("RuntimeAvailable %+v", c)
		}
		return nil
	})
	if c := condition(s, tradingv1alpha1.ConditionDegraded); s.Status.Phase != tradingv1alpha1.PhaseProvisioning || (c != nil && c.Status == metav1.ConditionTrue) {
		t.Errorf("during the first rollout: phase %s, Degraded %+v; want Provisioning, not degraded", s.Status.Phase, c)
	}
	markDeploymentReady(t, ns, "cols-api")
	waitCondition(t, ns, "cols", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")

	// The runtime's pods all go unready.
	eventually(t, "API Deployment marked unready", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "cols-api"), d); err != nil {
			return err
		}
		d.Status.ReadyReplicas, d.Status.AvailableReplicas = 0, 0
		for i := range d.Status.Conditions {
			if d.Status.Conditions[i].Type == appsv1.DeploymentAvailable {
				d.Status.Conditions[i].Status = corev1.ConditionFalse
				d.Status.Conditions[i].Reason = "MinimumReplicasUnavailable"
			}
		}
		return k8s.Status().Update(bg, d)
	})
	s = waitCondition(t, ns, "cols", tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonComponentsNotReady)
	if s.Status.Phase != tradingv1alpha1.PhaseDegraded || s.Status.Runtime.ReplicasText != "0/2" {
		t.Errorf("phase %s, replicas %q after the runtime went down; want Degraded, 0/2", s.Status.Phase, s.Status.Runtime.ReplicasText)
	}
	if c := condition(s, tradingv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Ready %+v with the runtime down", c)
	}
	// Each condition that changed has an event of its own, although both changes of the pass
	// share a reason (the events library folds events of one reason, action and object into
	// one series, whose note is the first one's).
	waitEvent(t, ns, tradingv1alpha1.ReasonComponentsNotReady, "Degraded is True")
	waitEvent(t, ns, tradingv1alpha1.ReasonComponentsNotReady, "Ready is False")
	markDeploymentReady(t, ns, "cols-api")
	s = waitCondition(t, ns, "cols", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if s.Status.Phase != tradingv1alpha1.PhaseReady {
		t.Errorf("phase %s after the runtime came back", s.Status.Phase)
	}

	// A change of the runtime's settings rolls its pods; the old ones serve meanwhile (here
	// the Deployment's status never catches up: no controller): still Ready, rolling out.
	dep := waitFor(t, &appsv1.Deployment{}, ns, "cols-api")
	updateStack(t, ns, "cols", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.RateLimits.Login = ptr.To[int32](7) })
	eventually(t, "the new pod template applied", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "cols-api"), d); err != nil {
			return err
		}
		if d.Generation == dep.Generation {
			return fmt.Errorf("generation still %d", d.Generation)
		}
		return nil
	})
	s = waitCondition(t, ns, "cols", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonRollingOut)
	if c := condition(s, tradingv1alpha1.ConditionReady); s.Status.Phase != tradingv1alpha1.PhaseReady || c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("during a rollout: phase %s, Ready %+v; want Ready", s.Status.Phase, c)
	}

	createStack(t, newStack(ns, "frozen", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = true }))
	s = waitCondition(t, ns, "frozen", tradingv1alpha1.ConditionReady, metav1.ConditionUnknown, tradingv1alpha1.ReasonPaused)
	if s.Status.Phase != tradingv1alpha1.PhasePending {
		t.Errorf("a stack paused from its creation is %s, want Pending", s.Status.Phase)
	}
}

// testHandEditsReverted: fields set by hand that the spec does not set, which Server-Side
// Apply alone keeps (another manager owns them), are removed: host access, a capability, a
// command and a service account on the runtime, a command on the database, a setting added
// to NAME-runtime, a session affinity on the Service. What others may rightly set stays: a
// `kubectl rollout restart` annotation on the pod template.
func testHandEditsReverted(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "he"))
	makeReady(t, ns, "he")

	edit := func(obj client.Object, manager, patch string) {
		t.Helper()
		obj.SetNamespace(ns)
		if err := k8s.Patch(bg, obj, client.RawPatch(types.StrategicMergePatchType, []byte(patch)), client.FieldOwner(manager)); err != nil {
			t.Fatalf("edit %T %s: %v", obj, obj.GetName(), err)
		}
	}
	edit(objectNamed(&appsv1.Deployment{}, ns, "he-api"), "kubectl-rollout",
		`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-11-29T00:00:00Z"}}}}}`)
	edit(objectNamed(&appsv1.Deployment{}, ns, "he-api"), "kubectl-edit", `{"spec":{"template":{"spec":{
		"hostNetwork":true,"serviceAccountName":"admin-sa",
		"volumes":[{"name":"host","hostPath":{"path":"/"}}],
		"containers":[{"name":"tradingd","args":["--debug"],"volumeMounts":[{"name":"host","mountPath":"/host"}],
			"ports":[{"containerPort":8080,"hostPort":8080}],
			"securityContext":{"capabilities":{"add":["SYS_ADMIN"]}}}]}}}}`)
	edit(objectNamed(&appsv1.StatefulSet{}, ns, "he-postgres"), "kubectl-edit",
		`{"spec":{"template":{"spec":{"containers":[{"name":"postgres","command":["sh","-c","sleep inf"]}]}}}}`)
	edit(objectNamed(&corev1.ConfigMap{}, ns, "he-runtime"), "kubectl-edit", `{"data":{"RATE_LIMIT_GLOBAL_PER_DAY":"0","EXTRA":"1"}}`)
	edit(objectNamed(&corev1.Service{}, ns, "he-api"), "kubectl-edit", `{"spec":{"sessionAffinity":"ClientIP"}}`)
	// An edit that also drops the managed-by label hides the object from the operator's cache;
	// its other changes go all the same.
	edit(objectNamed(&corev1.Service{}, ns, "he-postgres"), "kubectl-edit",
		`{"metadata":{"labels":{"app.kubernetes.io/managed-by":null}},"spec":{"externalIPs":["203.0.113.7"]}}`)

	eventually(t, "the hand edits removed", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "he-api"), d); err != nil {
			return err
		}
		ps := d.Spec.Template.Spec
		var c *corev1.Container
		for i := range ps.Containers {
			if ps.Containers[i].Name == "tradingd" {
				c = &ps.Containers[i]
			}
		}
		switch {
		case c == nil:
			return fmt.Errorf("no tradingd container")
		case ps.HostNetwork, ps.ServiceAccountName == "admin-sa", len(ps.Volumes) != 0 && slices.ContainsFunc(ps.Volumes, func(v corev1.Volume) bool { return v.HostPath != nil }):
			return fmt.Errorf("pod spec still has host access or the service account: hostNetwork %v, sa %q, volumes %v", ps.HostNetwork, ps.ServiceAccountName, ps.Volumes)
		case len(c.Args) != 0, len(c.VolumeMounts) != 0 && slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "host" }):
			return fmt.Errorf("container still has args %v, mounts %v", c.Args, c.VolumeMounts)
		case slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.HostPort != 0 }):
			return fmt.Errorf("container ports still bind the host: %v", c.Ports)
		case c.SecurityContext == nil || c.SecurityContext.Capabilities == nil || len(c.SecurityContext.Capabilities.Add) != 0 ||
			!slices.Equal(c.SecurityContext.Capabilities.Drop, []corev1.Capability{"ALL"}):
			return fmt.Errorf("capabilities %+v", c.SecurityContext)
		}
		if d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
			return fmt.Errorf("the rollout restart annotation was removed")
		}
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, "he-postgres"), sts); err != nil {
			return err
		}
		if cmd := sts.Spec.Template.Spec.Containers[0].Command; len(cmd) != 0 {
			return fmt.Errorf("postgres command still %v", cmd)
		}
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(bg, key(ns, "he-runtime"), cm); err != nil {
			return err
		}
		if _, ok := cm.Data["EXTRA"]; ok || cm.Data["RATE_LIMIT_GLOBAL_PER_DAY"] != "1000" {
			return fmt.Errorf("ConfigMap data %v", cm.Data)
		}
		svc := &corev1.Service{}
		if err := k8s.Get(bg, key(ns, "he-api"), svc); err != nil {
			return err
		}
		if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
			return fmt.Errorf("Service session affinity still ClientIP")
		}
		db := &corev1.Service{}
		if err := k8s.Get(bg, key(ns, "he-postgres"), db); err != nil {
			return err
		}
		if len(db.Spec.ExternalIPs) != 0 || db.Labels[ManagedByLabel] != ManagedByValue {
			return fmt.Errorf("Service he-postgres: externalIPs %v, labels %v", db.Spec.ExternalIPs, db.Labels)
		}
		return nil
	})
	waitEvent(t, ns, "Reverted", "hostNetwork")
	// Converged: further passes write nothing.
	passesWriteNothing(t, ns, "he")
}

// passesWriteNothing runs passes of the stack, once the manager's own have settled, and fails
// the test if they change any child.
func passesWriteNothing(t *testing.T, ns, name string) {
	t.Helper()
	operatorWrites.settle(t, ns)
	before := resourceVersions(t, ns, name)
	reconcileDirectly(t, ns, name, 3)
	if after := resourceVersions(t, ns, name); !maps.Equal(before, after) {
		t.Errorf("passes still write: %v -> %v", before, after)
	}
}

// testUserSecretNotAdopted: a Secret with a generated Secret's name that a user made before
// the stack is used as it is and never owned, so a stack that deletes its data with it
// (retainDataOnDelete false) does not delete the user's Secret; the Secrets the operator
// makes are owned as before.
func testUserSecretNotAdopted(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "us-admin"},
		StringData: map[string]string{adminPasswordKey: "my-own"}}); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "us", func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(false) }))
	makeReady(t, ns, "us")
	eventually(t, "the user's Secret used, marked and not owned", func() error {
		sec := &corev1.Secret{}
		if err := k8s.Get(bg, key(ns, "us-admin"), sec); err != nil {
			return err
		}
		switch {
		case string(sec.Data[adminPasswordKey]) != "my-own":
			return fmt.Errorf("data changed: %q", sec.Data[adminPasswordKey])
		case len(sec.OwnerReferences) != 0:
			return fmt.Errorf("owned: %+v (deleted with the stack)", sec.OwnerReferences)
		case sec.Annotations[userSecretAnnotation] == "":
			return fmt.Errorf("not marked as the user's: %v", sec.Annotations)
		}
		return nil
	})
	if s := getStack(t, ns, "us"); s.Status.Secrets.Admin != "us-admin" {
		t.Errorf("status.secrets.admin = %q", s.Status.Secrets.Admin)
	}
	jwt := waitFor(t, &corev1.Secret{}, ns, "us-jwt")
	if !hasControllerRef(jwt, getStack(t, ns, "us")) {
		t.Errorf("the generated JWT Secret is not owned with retainDataOnDelete false: %+v", jwt.OwnerReferences)
	}
	// Quiet at rest holds with the user's Secret in the stack.
	passesWriteNothing(t, ns, "us")
}

// testUserSecretMissingKeys: a Secret with a generated Secret's name that the user made before
// the stack is used as it is, so the operator puts back none of its keys; one that lacks a key
// the pods read (a CNPG-style username instead of user, no dsn; the admin password under
// another key) would leave the database's pod, the migration's and the runtime's in
// CreateContainerConfigError while the stack said it waits for the StatefulSet. The stack
// says which Secret lacks which key, on the condition of the component that reads it, and
// waits for the user (Failed); the user's data is not touched, and never shown.
func testUserSecretMissingKeys(t *testing.T) {
	ns := newNamespace(t)
	creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "uk-postgres-credentials"},
		StringData: map[string]string{"username": "trading", postgresPasswordKey: "pg-pass-of-the-user"}}
	admin := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "uk-admin"},
		StringData: map[string]string{"admin-password": "admin-pass-of-the-user"}}
	for _, sec := range []*corev1.Secret{creds, admin} {
		if err := k8s.Create(bg, sec); err != nil {
			t.Fatal(err)
		}
	}
	createStack(t, newStack(ns, "uk"))
	s := waitCondition(t, ns, "uk", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonSecretKeyMissing)
	db := condition(s, tradingv1alpha1.ConditionDatabaseReady).Message
	for _, want := range []string{"uk-postgres-credentials", "dsn", "user"} {
		if !strings.Contains(db, want) {
			t.Errorf("DatabaseReady message %q does not name %q", db, want)
		}
	}
	s = waitCondition(t, ns, "uk", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonSecretKeyMissing)
	if msg := condition(s, tradingv1alpha1.ConditionRuntimeAvailable).Message; !strings.Contains(msg, "uk-admin") || !strings.Contains(msg, adminPasswordKey) {
		t.Errorf("RuntimeAvailable message %q does not name Secret uk-admin and key %s", msg, adminPasswordKey)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseFailed {
		t.Errorf("phase %s, want Failed: only the user can fix the Secrets", s.Status.Phase)
	}
	for _, c := range s.Status.Conditions {
		if strings.Contains(c.Message, "pass-of-the-user") {
			t.Errorf("condition %s shows a Secret's value: %s", c.Type, c.Message)
		}
	}
	sameSecretData(t, "the user's Secrets", map[string]map[string][]byte{
		"uk-postgres-credentials": {"username": []byte("trading"), postgresPasswordKey: []byte("pg-pass-of-the-user")},
		"uk-admin":                {"admin-password": []byte("admin-pass-of-the-user")},
	}, secretData(t, ns, "uk-postgres-credentials", "uk-admin"))

	// The user adds the keys: the stack goes on (the Secrets' edits bring the pass).
	for _, fix := range []struct {
		name string
		data map[string][]byte
	}{
		{"uk-postgres-credentials", map[string][]byte{postgresUserKey: []byte("trading"),
			postgresDSNKey: []byte("postgres://trading:pg-pass-of-the-user@uk-postgres." + ns + ".svc:5432/trading?sslmode=disable")}},
		{"uk-admin", map[string][]byte{adminPasswordKey: []byte("admin-pass-of-the-user")}},
	} {
		sec := waitFor(t, &corev1.Secret{}, ns, fix.name)
		for k, v := range fix.data {
			sec.Data[k] = v
		}
		if err := k8s.Update(bg, sec); err != nil {
			t.Fatal(err)
		}
	}
	makeReady(t, ns, "uk")

	// An empty admin password is tradingd's "no first admin": a choice, which stops nothing.
	ns = newNamespace(t)
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ue-admin"},
		Data: map[string][]byte{adminPasswordKey: {}}}); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "ue"))
	makeReady(t, ns, "ue")
}

// testSecretLabelRemovedStaysOurs: removing the managed-by label from a generated Secret (it
// drops out of the operator's cache) puts the label back and leaves the Secret the stack's:
// still owned (deleted with a stack that does not retain its data), not marked as a user's.
func testSecretLabelRemovedStaysOurs(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "sl", func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(false) }))
	makeReady(t, ns, "sl")
	sec := waitFor(t, &corev1.Secret{}, ns, "sl-jwt")
	keys := string(sec.Data[jwtKeysKey])
	if err := k8s.Patch(bg, sec, client.RawPatch(types.JSONPatchType,
		[]byte(`[{"op":"remove","path":"/metadata/labels/app.kubernetes.io~1managed-by"}]`))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label back, the Secret still the stack's", func() error {
		sec := &corev1.Secret{}
		if err := k8s.Get(bg, key(ns, "sl-jwt"), sec); err != nil {
			return err
		}
		switch {
		case sec.Labels[ManagedByLabel] != ManagedByValue:
			return fmt.Errorf("labels %v", sec.Labels)
		case !hasControllerRef(sec, getStack(t, ns, "sl")):
			return fmt.Errorf("not owned: %v", sec.OwnerReferences)
		case sec.Annotations[userSecretAnnotation] != "":
			return fmt.Errorf("marked as a user's Secret: %v", sec.Annotations)
		case string(sec.Data[jwtKeysKey]) != keys:
			return fmt.Errorf("keys changed")
		}
		return nil
	})
}

// testGeneratedSecretKeysPutBack: a key removed by hand from a generated Secret is put back
// with a new value (the runtime's pods cannot start without it); the DSN of the managed
// database follows a new password; the keys that are there are kept.
func testGeneratedSecretKeysPutBack(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "gk"))
	makeReady(t, ns, "gk")
	remove := func(name, k string) (map[string][]byte, *corev1.Secret) {
		t.Helper()
		sec := waitFor(t, &corev1.Secret{}, ns, name)
		before := sec.Data
		if err := k8s.Patch(bg, sec, client.RawPatch(types.JSONPatchType, []byte(`[{"op":"remove","path":"/data/`+k+`"}]`))); err != nil {
			t.Fatal(err)
		}
		return before, sec
	}
	jwtBefore, _ := remove("gk-jwt", jwtKeysKey)
	pgBefore, pgRemoved := remove("gk-postgres-credentials", postgresPasswordKey)
	eventually(t, "the keys put back", func() error {
		jwt, pg := &corev1.Secret{}, &corev1.Secret{}
		if err := k8s.Get(bg, key(ns, "gk-jwt"), jwt); err != nil {
			return err
		}
		if err := k8s.Get(bg, key(ns, "gk-postgres-credentials"), pg); err != nil {
			return err
		}
		keys, password, dsn := string(jwt.Data[jwtKeysKey]), string(pg.Data[postgresPasswordKey]), string(pg.Data[postgresDSNKey])
		switch {
		case keys == "" || keys == string(jwtBefore[jwtKeysKey]):
			return fmt.Errorf("jwt keys %q", keys)
		case password == "" || password == string(pgBefore[postgresPasswordKey]):
			return fmt.Errorf("password %q", password)
		case !strings.Contains(dsn, ":"+password+"@"):
			return fmt.Errorf("the DSN does not hold the new password: %q", dsn)
		case string(pg.Data[postgresUserKey]) != string(pgBefore[postgresUserKey]):
			return fmt.Errorf("user changed")
		}
		return nil
	})

	// A pass whose cache still shows the password removed (the write that put it back on its
	// way) keeps the password put back: a second new one would leave the database, which
	// takes the first when its pod restarts, and the runtime apart.
	restored := waitFor(t, &corev1.Secret{}, ns, "gk-postgres-credentials")
	if _, _, err := reconcileStale(t, ns, "gk", pgRemoved); err != nil {
		t.Fatalf("a pass with a stale Secret failed: %v", err)
	}
	now := waitFor(t, &corev1.Secret{}, ns, "gk-postgres-credentials")
	if string(now.Data[postgresPasswordKey]) != string(restored.Data[postgresPasswordKey]) || now.ResourceVersion != restored.ResourceVersion {
		t.Errorf("a pass with a stale Secret replaced the password put back (resourceVersion %s -> %s)", restored.ResourceVersion, now.ResourceVersion)
	}
}

// testEmptiedAdminPasswordKept: the contract keeps a user-edited value of a generated Secret,
// and an empty NAME-admin password is one with a meaning (tradingd's "no first admin", as
// for a NAME-admin the user made): it is kept, not replaced with a new random password that
// would bring a bootstrap admin back on the pods' next start; the pods roll onto it.
func testEmptiedAdminPasswordKept(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ea"))
	makeReady(t, ns, "ea")
	before := waitFor(t, &appsv1.Deployment{}, ns, "ea-api").Spec.Template.Annotations[configHashAnnotation]
	admin := waitFor(t, &corev1.Secret{}, ns, "ea-admin")
	if len(admin.Data[adminPasswordKey]) == 0 {
		t.Fatal("the generated admin password is empty")
	}
	admin.Data[adminPasswordKey] = []byte{}
	if err := k8s.Update(bg, admin); err != nil {
		t.Fatal(err)
	}
	// The passes below judge the edit, not a cache from before it.
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	eventually(t, "the operator's cache sees the edit", func() error {
		live, cached := &corev1.Secret{}, &corev1.Secret{}
		if err := k8s.Get(bg, key(ns, "ea-admin"), live); err != nil {
			return err
		}
		if live.ResourceVersion != admin.ResourceVersion {
			return nil // written again since the edit: judged below
		}
		if err := mgr.GetCache().Get(bg, key(ns, "ea-admin"), cached); err != nil {
			return err
		}
		if cached.ResourceVersion != admin.ResourceVersion {
			return fmt.Errorf("cache at resourceVersion %s, the edit is %s", cached.ResourceVersion, admin.ResourceVersion)
		}
		return nil
	})
	reconcileDirectly(t, ns, "ea", 3)
	now := waitFor(t, &corev1.Secret{}, ns, "ea-admin")
	if v, ok := now.Data[adminPasswordKey]; !ok || len(v) != 0 {
		t.Fatalf("the emptied admin password was replaced (key present %v, %d bytes)", ok, len(v))
	}
	eventually(t, "the runtime rolls onto the emptied password", func() error {
		dep := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "ea-api"), dep); err != nil {
			return err
		}
		if h := dep.Spec.Template.Annotations[configHashAnnotation]; h == before {
			return fmt.Errorf("config hash still %s", h)
		}
		return nil
	})
}

// testForeignObjectLeftAlone: an object a user made with a child's name (a Service
// NAME-postgres) is not taken over: the apply would have removed its ports. The stack says
// why it does not progress, and adding the operator's labels hands the object over.
func testForeignObjectLeftAlone(t *testing.T) {
	ns := newNamespace(t)
	users := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fo-postgres"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "mine", Port: 1234}}}}
	if err := k8s.Create(bg, users); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "fo"))
	s := waitCondition(t, ns, "fo", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	if c := meta.FindStatusCondition(s.Status.Conditions, tradingv1alpha1.ConditionReady); !strings.Contains(c.Message, "Service fo-postgres already exists and is not this stack's") {
		t.Errorf("Ready's message does not say why: %q", c.Message)
	}
	svc := &corev1.Service{}
	if err := k8s.Get(bg, key(ns, "fo-postgres"), svc); err != nil {
		t.Fatal(err)
	}
	if len(svc.OwnerReferences) != 0 || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 1234 {
		t.Fatalf("the user's Service was changed: owners %v, ports %v", svc.OwnerReferences, svc.Spec.Ports)
	}
	svc.Labels = map[string]string{ManagedByLabel: ManagedByValue, instanceLabel: "fo"}
	if err := k8s.Update(bg, svc); err != nil {
		t.Fatal(err)
	}
	// No event of an unowned object wakes the stack (the retry's backoff would, later): a
	// change of the spec does. (A direct reconcile here would race the manager's own.)
	updateStack(t, ns, "fo", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.RateLimits.Login = ptr.To[int32](7) })
	eventually(t, "the labelled Service handed over", func() error {
		if err := k8s.Get(bg, key(ns, "fo-postgres"), svc); err != nil {
			return err
		}
		if !hasControllerRef(svc, getStack(t, ns, "fo")) || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 5432 {
			return fmt.Errorf("owners %v, ports %v", svc.OwnerReferences, svc.Spec.Ports)
		}
		return nil
	})
}

// testInvalidHandEditsReverted: a hand edit that the forced apply cannot go with (the API
// server refuses the result as invalid) is removed and the apply goes through, instead of
// failing every pass: the API Service turned into a load balancer with source ranges (which a
// ClusterIP Service may not have), the Redis Deployment's strategy turned to RollingUpdate
// (the API server adds a rollingUpdate that nobody owns, which Recreate forbids).
func testInvalidHandEditsReverted(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "inv"))
	makeReady(t, ns, "inv")
	edit := func(obj client.Object, patch string) {
		t.Helper()
		if err := k8s.Patch(bg, obj, client.RawPatch(types.StrategicMergePatchType, []byte(patch)), client.FieldOwner("kubectl-edit")); err != nil {
			t.Fatalf("edit %s: %v", obj.GetName(), err)
		}
	}
	edit(objectNamed(&corev1.Service{}, ns, "inv-api"), `{"spec":{"type":"LoadBalancer","loadBalancerSourceRanges":["10.0.0.0/8"]}}`)
	edit(objectNamed(&appsv1.Deployment{}, ns, "inv-redis"), `{"spec":{"strategy":{"type":"RollingUpdate"}}}`)
	// NAME-runtime made immutable by hand, then a setting changed: it is made again.
	edit(objectNamed(&corev1.ConfigMap{}, ns, "inv-runtime"), `{"immutable":true}`)
	updateStack(t, ns, "inv", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.RateLimits.Login = ptr.To[int32](9) })
	eventually(t, "NAME-runtime made again with the new setting", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(bg, key(ns, "inv-runtime"), cm); err != nil {
			return err
		}
		if cm.Data["RATE_LIMIT_LOGIN"] != "9" || ptr.Deref(cm.Immutable, false) {
			return fmt.Errorf("RATE_LIMIT_LOGIN %q, immutable %v", cm.Data["RATE_LIMIT_LOGIN"], cm.Immutable)
		}
		return nil
	})
	eventually(t, "the Service and the Redis strategy put back", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "inv-redis"), d); err != nil {
			return err
		}
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate != nil {
			return fmt.Errorf("redis strategy %+v", d.Spec.Strategy)
		}
		svc := &corev1.Service{}
		if err := k8s.Get(bg, key(ns, "inv-api"), svc); err != nil {
			return err
		}
		if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.LoadBalancerSourceRanges) != 0 {
			return fmt.Errorf("Service type %s, source ranges %v", svc.Spec.Type, svc.Spec.LoadBalancerSourceRanges)
		}
		return nil
	})
	waitCondition(t, ns, "inv", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// refuseInNamespace makes the API server refuse op (and updates) on resource of group in ns
// with message, through a ValidatingAdmissionPolicy, as a webhook or policy of a cluster
// might; try is an attempt that must come to be refused. The returned function lifts it.
func refuseInNamespace(t *testing.T, ns, group, resource string, op admissionregistrationv1.OperationType, message string, try func() error) func() {
	t.Helper()
	name := "refuse-" + resource + "-" + ns
	versions := []string{"v1"}
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{op, admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{group}, APIVersions: versions, Resources: []string{resource}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "false", Message: message}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
		},
	}
	lift := func() {
		for _, o := range []client.Object{binding, policy} {
			_ = k8s.Delete(bg, o)
		}
	}
	for _, o := range []client.Object{policy, binding} {
		if err := k8s.Create(bg, o); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(lift)
	eventually(t, "the admission policy in force", func() error {
		err := try()
		if err == nil {
			return fmt.Errorf("still admitted")
		}
		if !strings.Contains(err.Error(), message) {
			return fmt.Errorf("refused for another reason: %v", err)
		}
		return nil
	})
	return lift
}

// waitEvent waits for an event of ns with reason whose message contains text (the recorder
// writes events asynchronously) and returns the namespace's events as then listed.
func waitEvent(t *testing.T, ns, reason, text string) *corev1.EventList {
	t.Helper()
	events := &corev1.EventList{}
	eventually(t, fmt.Sprintf("a %s event saying %q", reason, text), func() error {
		if err := k8s.List(bg, events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == reason && strings.Contains(e.Message, text) {
				return nil
			}
		}
		return fmt.Errorf("none yet")
	})
	return events
}

// testNetworkPoliciesFirst: the NetworkPolicies depend on the spec alone and are applied
// before anything else, so a database that runs while a later step waits (for the database
// itself, or for a Redis password Secret not made yet) is never open to every pod of the
// namespace meanwhile; one deleted by hand in that state is put back.
func testNetworkPoliciesFirst(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "np", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "later", Key: "pw"}}
	}))
	waitFor(t, &appsv1.StatefulSet{}, ns, "np-postgres")
	np := waitFor(t, &networkingv1.NetworkPolicy{}, ns, "np-postgres")
	markStatefulSetReady(t, ns, "np-postgres")
	waitCondition(t, ns, "np", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing)

	deleteAndWaitPutBack(t, np, "NetworkPolicy np-postgres put back while the Redis password is missing")
}

// deleteAndWaitPutBack deletes obj and waits until the operator made it again (a new UID).
// Background, as kubectl deletes: a Job's API default is to orphan its pods, through a
// finalizer that only the garbage collector (absent here) removes.
func deleteAndWaitPutBack(t *testing.T, obj client.Object, what string) {
	t.Helper()
	uid := obj.GetUID()
	if err := k8s.Delete(bg, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	eventually(t, what, func() error {
		fresh := obj.DeepCopyObject().(client.Object)
		if err := k8s.Get(bg, client.ObjectKeyFromObject(obj), fresh); err != nil {
			return err
		}
		if fresh.GetUID() == uid {
			return fmt.Errorf("still the deleted object")
		}
		return nil
	})
}

// testMissingSecretWhileServing: a user's Secret (here the Redis password) deleted under a
// stack that serves leaves its pods serving with what they read at start: the stack is
// Degraded, saying what it waits for, and stays so on every later pass (it read Degraded on
// the first pass and Failed, "nothing needs attention", from the second on).
func testMissingSecretWhileServing(t *testing.T) {
	ns := newNamespace(t)
	pw := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-redis"}, StringData: map[string]string{"pw": "s3cret"}}
	if err := k8s.Create(bg, pw); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "ms", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-redis", Key: "pw"}}
	}))
	makeReady(t, ns, "ms")
	if err := k8s.Delete(bg, pw); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "ms", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing)
	reconcileDirectly(t, ns, "ms", 3)
	s := getStack(t, ns, "ms")
	if c := condition(s, tradingv1alpha1.ConditionDegraded); s.Status.Phase != tradingv1alpha1.PhaseDegraded || c == nil ||
		c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "CacheReady") {
		t.Errorf("phase %s, Degraded %+v; want Degraded, naming CacheReady", s.Status.Phase, c)
	}
}

// testRedisTLSCA: an external Redis over TLS with a private CA. The stack waits for the CA's
// Secret (CacheSecretMissing), goes on when it appears, and mounts only that key as the file
// REDIS_CA_FILE names beside a rediss:// REDIS_URL; a renewed CA rolls the pods.
func testRedisTLSCA(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "tls", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			TLS: &tradingv1alpha1.RedisTLS{Enabled: true, CASecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-ca", Key: "bundle.pem"}}}
	}))
	markStatefulSetReady(t, ns, "tls-postgres")
	waitCondition(t, ns, "tls", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing)

	// Not a certificate: the runtime would refuse it at start, so the stack says so instead.
	ca := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-ca"},
		StringData: map[string]string{"bundle.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "other": "x"}}
	if err := k8s.Create(bg, ca); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "tls", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonInvalidCertificate)
	// Only the user can fix it: the stack says it waits for them (Failed), as for a missing Secret.
	eventually(t, "phase Failed while the CA is not a certificate", func() error {
		if s := getStack(t, ns, "tls"); s.Status.Phase != tradingv1alpha1.PhaseFailed {
			return fmt.Errorf("phase %s", s.Status.Phase)
		}
		return nil
	})
	ca.StringData = map[string]string{"bundle.pem": testCAPEM(t)}
	if err := k8s.Update(bg, ca); err != nil {
		t.Fatal(err)
	}
	s := makeReady(t, ns, "tls")
	if c := condition(s, tradingv1alpha1.ConditionCacheReady); c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "over TLS") {
		t.Errorf("CacheReady %+v, want True, saying TLS", c)
	}
	cm := waitFor(t, &corev1.ConfigMap{}, ns, "tls-runtime")
	if got := cm.Data["REDIS_URL"]; got != "rediss://cache.corp:6380/0" {
		t.Errorf("REDIS_URL %q, want rediss://cache.corp:6380/0", got)
	}
	if got := cm.Data["REDIS_CA_FILE"]; got != "/etc/tradingd/redis-ca/ca.crt" {
		t.Errorf("REDIS_CA_FILE %q", got)
	}
	dep := waitFor(t, &appsv1.Deployment{}, ns, "tls-api")
	var vol *corev1.Volume
	for i, v := range dep.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "corp-ca" {
			vol = &dep.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil || len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != "bundle.pem" || vol.Secret.Items[0].Path != "ca.crt" {
		t.Fatalf("no volume of the CA's key alone: %+v", dep.Spec.Template.Spec.Volumes)
	}
	mounted := false
	for _, m := range dep.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounted = mounted || (m.Name == vol.Name && m.MountPath == "/etc/tradingd/redis-ca" && m.ReadOnly)
	}
	if !mounted {
		t.Errorf("the CA is not mounted read-only at /etc/tradingd/redis-ca: %+v", dep.Spec.Template.Spec.Containers[0].VolumeMounts)
	}

	// Another key of the Secret changing (a cert-manager Secret's tls.key, say) is not the CA:
	// the pods stay; a renewed CA rolls them.
	hash := dep.Spec.Template.Annotations[configHashAnnotation]
	if err := k8s.Get(bg, client.ObjectKeyFromObject(ca), ca); err != nil {
		t.Fatal(err)
	}
	ca.StringData = map[string]string{"other": "y"}
	if err := k8s.Update(bg, ca); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "tls", 1)
	if fresh := waitFor(t, &appsv1.Deployment{}, ns, "tls-api"); fresh.Spec.Template.Annotations[configHashAnnotation] != hash {
		t.Errorf("another key of the CA's Secret changed the pods' configuration hash")
	}
	if err := k8s.Get(bg, client.ObjectKeyFromObject(ca), ca); err != nil {
		t.Fatal(err)
	}
	ca.StringData = map[string]string{"bundle.pem": testCAPEM(t)}
	if err := k8s.Update(bg, ca); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a renewed CA rolls the pods", func() error {
		fresh := waitFor(t, &appsv1.Deployment{}, ns, "tls-api")
		if fresh.Spec.Template.Annotations[configHashAnnotation] == hash {
			return fmt.Errorf("config hash unchanged")
		}
		return nil
	})
}

// testExternalPostgresCA: an external database with a CA bundle. The stack waits for the
// CA's Secret (DatabaseReady False, naming it), and once it exists the migration Job and the
// runtime both mount it, with PGSSLROOTCERT naming the file.
func testExternalPostgresCA(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-db"},
		StringData: map[string]string{"dsn": "postgres://u:p@db.corp:5432/trading?sslmode=verify-full"}}); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "pgca", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{
			ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"},
			CASecretRef:         &tradingv1alpha1.SecretKeyReference{Name: "corp-db-ca", Key: "ca.pem"}}
	}))
	s := waitCondition(t, ns, "pgca", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
	if c := condition(s, tradingv1alpha1.ConditionDatabaseReady); !strings.Contains(c.Message, "spec.postgres.external.caSecretRef") {
		t.Errorf("DatabaseReady message %q does not name the field", c.Message)
	}
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-db-ca"},
		StringData: map[string]string{"ca.pem": testCAPEM(t)}}); err != nil {
		t.Fatal(err)
	}
	job := waitExternalMigrationJob(t, ns, "pgca", "corp-db")
	makeReady(t, ns, "pgca")
	for what, pod := range map[string]corev1.PodSpec{
		"migration Job": job.Spec.Template.Spec,
		"runtime":       waitFor(t, &appsv1.Deployment{}, ns, "pgca-api").Spec.Template.Spec,
	} {
		root := ""
		for _, e := range pod.Containers[0].Env {
			if e.Name == "PGSSLROOTCERT" {
				root = e.Value
			}
		}
		mounted := false
		for _, v := range pod.Volumes {
			if v.Secret == nil || v.Secret.SecretName != "corp-db-ca" {
				continue
			}
			for _, m := range pod.Containers[0].VolumeMounts {
				mounted = mounted || (m.Name == v.Name && m.MountPath+"/"+v.Secret.Items[0].Path == root)
			}
		}
		if root == "" || !mounted {
			t.Errorf("%s: PGSSLROOTCERT %q, CA mounted there %v", what, root, mounted)
		}
	}
}

// testPoolsWarning: pools that together exceed the managed database's connections are said in
// DatabaseReady's message (the stack works until the load comes); smaller pools clear it.
func testPoolsWarning(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "pools", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 4 }))
	s := makeReady(t, ns, "pools")
	if c := condition(s, tradingv1alpha1.ConditionDatabaseReady); c == nil || c.Status != metav1.ConditionTrue ||
		!strings.Contains(c.Message, "warning: the runtime's pools may open 152 connections") {
		t.Errorf("DatabaseReady %+v, want True with the pools' warning", c)
	}
	updateStack(t, ns, "pools", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.Pool.MaxConns = 19 })
	eventually(t, "the warning cleared", func() error {
		c := condition(getStack(t, ns, "pools"), tradingv1alpha1.ConditionDatabaseReady)
		if c == nil || strings.Contains(c.Message, "warning") {
			return fmt.Errorf("DatabaseReady %+v", c)
		}
		return nil
	})
}

// testInvalidChildIsFailed: a spec value the schema lets through but the API server refuses
// in the child (Redis requests above its limits) fails the stack: the step's own condition
// says so (CacheReady False/ApplyFailed, not "an earlier step stopped this pass"), and the
// phase is Failed, not Provisioning, since only a change of the spec can help.
func testInvalidChildIsFailed(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "inv", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Resources = requestsAboveLimits()
	}))
	markStatefulSetReady(t, ns, "inv-postgres")
	s := waitCondition(t, ns, "inv", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	if c := condition(s, tradingv1alpha1.ConditionCacheReady); !strings.Contains(c.Message, "limit") {
		t.Errorf("CacheReady message %q does not say what the API server refused", c.Message)
	}
	eventually(t, "phase Failed", func() error {
		if s := getStack(t, ns, "inv"); s.Status.Phase != tradingv1alpha1.PhaseFailed {
			return fmt.Errorf("phase %s", s.Status.Phase)
		}
		return nil
	})

	// A serving stack whose new spec is refused: the message is the API server's answer
	// about the spec, not a failed put-back of a hand edit that never happened.
	createStack(t, newStack(ns, "inv2"))
	makeReady(t, ns, "inv2")
	updateStack(t, ns, "inv2", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Resources = requestsAboveLimits()
	})
	s = waitCondition(t, ns, "inv2", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	if c := condition(s, tradingv1alpha1.ConditionReady); strings.Contains(c.Message, "put back") || !strings.Contains(c.Message, "limit") {
		t.Errorf("Ready message %q: want the refusal of the spec, not a put-back", c.Message)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseDegraded {
		t.Errorf("phase %s, want Degraded (it serves the previous spec)", s.Status.Phase)
	}
}

// testEditWhileStoppedPutBack: a hand edit made while no operator ran, one that only removes
// fields (which leaves the editor no managedFields entry), is put back by the next operator
// process. (A restart shortcut that trusted managedFields to show every edit missed it.)
func testEditWhileStoppedPutBack(t *testing.T) {
	ns := newNamespace(t)
	memory := func(q string) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(q)}}
	}
	createStack(t, newStack(ns, "ws", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Resources = memory("128Mi")
		s.Spec.Runtime.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")}
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Resources: memory("256Mi")}
	}))
	makeReady(t, ns, "ws")
	stopManagerForTest(t)
	// A hand edit of one child, a spec change that drops a field of another and one that
	// changes a value of a third: a new operator process has no memory of what it applied,
	// and must still see all three.
	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "ws-redis"), dep); err != nil {
		t.Fatal(err)
	}
	dep.Spec.Template.Spec.Containers[0].LivenessProbe = nil
	if err := k8s.Update(bg, dep); err != nil {
		t.Fatal(err)
	}
	updateStack(t, ns, "ws", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Resources.Limits = nil
		s.Spec.Postgres.Managed.Resources = memory("300Mi")
	})
	// And a monitoring kind, read through its CRD's published schema.
	sm := &unstructured.Unstructured{}
	sm.SetGroupVersionKind(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"})
	if err := k8s.Get(bg, key(ns, "ws-api"), sm); err != nil {
		t.Fatal(err)
	}
	endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	endpoints[0].(map[string]any)["interval"] = "5m"
	if err := unstructured.SetNestedSlice(sm.Object, endpoints, "spec", "endpoints"); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Update(bg, sm); err != nil {
		t.Fatal(err)
	}
	if err := startManager(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the liveness probe put back by a new operator process", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "ws-redis"), d); err != nil {
			return err
		}
		if d.Spec.Template.Spec.Containers[0].LivenessProbe == nil {
			return fmt.Errorf("no liveness probe")
		}
		return nil
	})
	eventually(t, "the memory limit the spec dropped gone from the runtime", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "ws-api"), d); err != nil {
			return err
		}
		if l := d.Spec.Template.Spec.Containers[0].Resources.Limits; len(l) > 0 {
			return fmt.Errorf("limits %v", l)
		}
		return nil
	})
	eventually(t, "the ServiceMonitor's interval put back", func() error {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(sm.GroupVersionKind())
		if err := k8s.Get(bg, key(ns, "ws-api"), got); err != nil {
			return err
		}
		endpoints, _, _ := unstructured.NestedSlice(got.Object, "spec", "endpoints")
		if len(endpoints) != 1 || endpoints[0].(map[string]any)["interval"] != "30s" {
			return fmt.Errorf("endpoints %v", endpoints)
		}
		return nil
	})
	eventually(t, "the database's new memory request", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, "ws-postgres"), sts); err != nil {
			return err
		}
		if m := sts.Spec.Template.Spec.Containers[0].Resources.Requests.Memory(); m.String() != "300Mi" {
			return fmt.Errorf("memory request %s", m)
		}
		return nil
	})
}

// stopManagerForTest stops the shared manager; when the test ends, whatever manager it
// started is stopped and the shared one (all namespaces) runs again.
func stopManagerForTest(t *testing.T) {
	t.Helper()
	stopManager()
	t.Cleanup(func() {
		stopManager()
		if err := startManager(); err != nil {
			t.Fatalf("restart the manager for all namespaces: %v", err)
		}
	})
}

// requestsAboveLimits is a value the schema lets through and the API server refuses in a
// pod template: a memory request above its limit.
func requestsAboveLimits() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
	}
}

// A change of the stack's annotations wakes it: after fixing what a pass failed on (a quota,
// RBAC: nothing the operator watches), `kubectl annotate` asks for the next pass now instead of
// at the end of the backoff. Here the pass has a visible effect: it puts right a status that
// was written by hand (a status write alone wakes nobody).
func testAnnotationRequestsPass(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "nudge"))
	makeReady(t, ns, "nudge")
	// The passes that makeReady's last writes set off (one that met the cache behind runs again
	// 200 ms later) end first; a pass still under way could put the status right by itself.
	operatorWrites.settle(t, ns)
	for attempt := 1; ; attempt++ {
		eventually(t, "status written by hand", func() error {
			s := getStack(t, ns, "nudge")
			s.Status.Phase = tradingv1alpha1.PhaseFailed
			return k8s.Status().Update(bg, s)
		})
		time.Sleep(2 * time.Second)
		phase := getStack(t, ns, "nudge").Status.Phase
		if phase == tradingv1alpha1.PhaseFailed {
			break
		}
		if attempt == 3 {
			t.Fatalf("phase %q: something other than the annotation woke the stack three times, the test proves nothing", phase)
		}
	}
	eventually(t, "annotate", func() error {
		s := getStack(t, ns, "nudge")
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations["example.com/retry"] = "1"
		return k8s.Update(bg, s)
	})
	eventually(t, "phase Ready after the annotation", func() error {
		if phase := getStack(t, ns, "nudge").Status.Phase; phase != tradingv1alpha1.PhaseReady {
			return fmt.Errorf("phase %q", phase)
		}
		return nil
	})
}

// testMoveWaitsForUserSecret: a serving stack moved to an external Redis, then an external
// database, whose Secret does not exist yet (a typo, a Secret applied after the stack). The
// stack waits for it (CacheReady or DatabaseReady False, Degraded "serves, waits for a user's
// action"), and meanwhile the managed Redis and PostgreSQL keep running, with their
// NetworkPolicies: the runtime, still configured for them, keeps serving. They were deleted
// before the Secret was looked at, so the stack said it served while its database was gone.
// Once the Secret exists the move goes on, and the managed ones are removed once the runtime
// has rolled out without them (and, for the database, the external one is migrated).
func testMoveWaitsForUserSecret(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mw"))
	makeReady(t, ns, "mw")
	updateStack(t, ns, "mw", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-redis", Key: "pw"}}
	})
	waitCondition(t, ns, "mw", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing)
	stillThere(t, "external Redis's Secret missing", managedRedis(ns, "mw")...)
	waitMessage(t, ns, "mw", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment mw-redis", "corp-redis"))
	gen := runtimeGeneration(t, ns, "mw")
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-redis"},
		StringData: map[string]string{"pw": "s3cret"}}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "mw", tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheExternal)
	waitRuntimeTemplate(t, ns, "mw", gen)
	markDeploymentReady(t, ns, "mw-api")
	waitGone(t, "managed Redis removed once the external one's Secret exists and the runtime rolled out", managedRedis(ns, "mw")...)
	waitCondition(t, ns, "mw", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")

	updateStack(t, ns, "mw", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"}}
	})
	waitCondition(t, ns, "mw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
	stillThere(t, "external database's Secret missing", managedPostgres(ns, "mw")...)
	waitMessage(t, ns, "mw", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet mw-postgres", "corp-db"))
	gen = runtimeGeneration(t, ns, "mw")
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-db"},
		StringData: map[string]string{"dsn": "postgres://app:pw@db.corp:5432/trading"}}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "mw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase)
	finishJob(t, ns, waitExternalMigrationJob(t, ns, "mw", "corp-db").Name, true)
	waitRuntimeTemplate(t, ns, "mw", gen)
	markDeploymentReady(t, ns, "mw-api")
	waitGone(t, "managed PostgreSQL removed once the external one's Secret exists, it is migrated and the runtime rolled out",
		managedPostgres(ns, "mw")...)
}

// testMoveBothWaitsForRedisSecret: one edit moves a serving stack to an external database
// (its Secret exists) and an external Redis (its Secret does not, yet): the cache step waits,
// so the runtime, migrations and all stay on the managed database; that database must stay
// too until the later steps can run.
func testMoveBothWaitsForRedisSecret(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mb"))
	makeReady(t, ns, "mb")
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-db"},
		StringData: map[string]string{"dsn": "postgres://app:pw@db.corp:5432/trading"}}); err != nil {
		t.Fatal(err)
	}
	updateStack(t, ns, "mb", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"}}
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-redis", Key: "pw"}}
	})
	waitCondition(t, ns, "mb", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing)
	gen := runtimeGeneration(t, ns, "mb")
	reconcileDirectly(t, ns, "mb", 2)
	for _, o := range []client.Object{objectNamed(&appsv1.StatefulSet{}, ns, "mb-postgres"), objectNamed(&corev1.Service{}, ns, "mb-postgres"),
		objectNamed(&networkingv1.NetworkPolicy{}, ns, "mb-postgres")} {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil || o.GetDeletionTimestamp() != nil {
			t.Errorf("%T %s gone while the stack waits for the Redis Secret and its runtime still uses it (%v)", o, o.GetName(), err)
		}
	}
	dep := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "mb-api"), dep); err != nil {
		t.Fatal(err)
	}
	t.Logf("runtime env still: %v", dep.Spec.Template.Spec.Containers[0].Env)
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "corp-redis"},
		StringData: map[string]string{"pw": "s3cret"}}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "mb", tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheExternal)
	// The runtime's pod template is held on the managed database until the external one is
	// migrated, so its pods keep the managed Redis too: a Deployment that has rolled out
	// completely is no sign they left it.
	reconcileDirectly(t, ns, "mb", 2)
	stillThere(t, "the runtime held on the managed database", managedRedis(ns, "mb")...)
	waitMessage(t, ns, "mb", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment mb-api keeps its pod template from before"))
	finishJob(t, ns, waitExternalMigrationJob(t, ns, "mb", "corp-db").Name, true)
	waitRuntimeTemplate(t, ns, "mb", gen)
	markDeploymentReady(t, ns, "mb-api")
	waitGone(t, "managed PostgreSQL and Redis removed once both Secrets exist, the database is migrated and the runtime rolled out",
		append(managedPostgres(ns, "mb"), managedRedis(ns, "mb")...)...)
}

// testUserSecretKeyAddedNotStale: once the user adds the key a user-made Secret lacked, the
// RuntimeAvailable that named it no longer does, even when a later step (the external
// database's missing Secret) stops the pass before the runtime's step.
func testUserSecretKeyAddedNotStale(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "us-admin"},
		StringData: map[string]string{"admin-password": "x"}}); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns, "us", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"}}
	}))
	waitCondition(t, ns, "us", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonSecretKeyMissing)
	sec := waitFor(t, &corev1.Secret{}, ns, "us-admin")
	sec.Data[adminPasswordKey] = []byte("x")
	if err := k8s.Update(bg, sec); err != nil {
		t.Fatal(err)
	}
	s := waitCondition(t, ns, "us", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c.Reason == tradingv1alpha1.ReasonSecretKeyMissing {
		t.Errorf("RuntimeAvailable still says the fixed Secret lacks a key: %s", c.Message)
	}
	if c := condition(s, tradingv1alpha1.ConditionProgressing); true {
		t.Logf("Progressing %s %s: %s; phase %s", c.Status, c.Reason, c.Message, s.Status.Phase)
	}
}

// testRedisMaxMemoryFollowsLimit: the managed Redis's maxmemory is a share of its container's
// memory limit as the API server stores it, and follows spec.redis.resources: a raised limit
// raises it, and resources without a limit take it away.
func testRedisMaxMemoryFollowsLimit(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "mem"))
	argsSay := func(what, want string) {
		t.Helper()
		eventually(t, what, func() error {
			d := &appsv1.Deployment{}
			if err := k8s.Get(bg, key(ns, "mem-redis"), d); err != nil {
				return err
			}
			c := d.Spec.Template.Spec.Containers[0]
			args := strings.Join(c.Args, " ")
			if !strings.Contains(args, "--maxmemory-policy volatile-lru") {
				return fmt.Errorf("args %q without --maxmemory-policy volatile-lru", args)
			}
			if got := strings.Contains(args, "--maxmemory "+want); want != "" && !got {
				return fmt.Errorf("args %q, want --maxmemory %s (limit %s)", args, want, c.Resources.Limits.Memory())
			}
			if want == "" && strings.Contains(args, "--maxmemory ") {
				return fmt.Errorf("args %q with a maxmemory, but no memory limit %v", args, c.Resources.Limits)
			}
			return nil
		})
	}
	argsSay("maxmemory 3/4 of the default 256Mi", "201326592")
	updateStack(t, ns, "mem", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
	})
	argsSay("maxmemory 3/4 of a limit of 1Gi", "805306368")
	updateStack(t, ns, "mem", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")}}
	})
	argsSay("no maxmemory without a memory limit", "")
}
