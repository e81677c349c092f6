package controllers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

var bg = context.Background()

// amount is a decimal field's value written as a string.
func amount(v string) *intstr.IntOrString { return ptr.To(intstr.FromString(v)) }

func key(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

// newStack returns a TradingStack with an explicit runtime image (so that tests
// can change it) and whatever mutate sets.
func newStack(ns, name string, mutate ...func(*tradingv1alpha1.TradingStack)) *tradingv1alpha1.TradingStack {
	s := &tradingv1alpha1.TradingStack{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	s.Spec.Runtime.Image = "registry.example.com/tradingd:v1"
	for _, m := range mutate {
		m(s)
	}
	return s
}

func createStack(t *testing.T, s *tradingv1alpha1.TradingStack) {
	t.Helper()
	if err := k8s.Create(bg, s); err != nil {
		t.Fatalf("create TradingStack %s: %v", s.Name, err)
	}
}

func getStack(t *testing.T, ns, name string) *tradingv1alpha1.TradingStack {
	t.Helper()
	s := &tradingv1alpha1.TradingStack{}
	if err := k8s.Get(bg, key(ns, name), s); err != nil {
		t.Fatalf("get TradingStack %s: %v", name, err)
	}
	return s
}

// updateStack changes a stack's spec, retrying on conflicts with the operator's
// status writes.
func updateStack(t *testing.T, ns, name string, mutate func(*tradingv1alpha1.TradingStack)) {
	t.Helper()
	eventually(t, "update TradingStack "+name, func() error {
		s := &tradingv1alpha1.TradingStack{}
		if err := k8s.Get(bg, key(ns, name), s); err != nil {
			return err
		}
		mutate(s)
		return k8s.Update(bg, s)
	})
}

func condition(s *tradingv1alpha1.TradingStack, t string) *metav1.Condition {
	return meta.FindStatusCondition(s.Status.Conditions, t)
}

// waitCondition waits until the stack's condition has the status (and reason,
// unless empty) for the stack's current generation.
func waitCondition(t *testing.T, ns, name, condType string, status metav1.ConditionStatus, reason string) *tradingv1alpha1.TradingStack {
	t.Helper()
	var s *tradingv1alpha1.TradingStack
	eventually(t, fmt.Sprintf("%s %s=%s %s", name, condType, status, reason), func() error {
		s = &tradingv1alpha1.TradingStack{}
		if err := k8s.Get(bg, key(ns, name), s); err != nil {
			return err
		}
		c := condition(s, condType)
		switch {
		case c == nil:
			return fmt.Errorf("no %s condition; conditions: %s", condType, describeConditions(s))
		case c.Status != status || (reason != "" && c.Reason != reason):
			return fmt.Errorf("%s is %s/%s: %s", condType, c.Status, c.Reason, c.Message)
		case c.ObservedGeneration != s.Generation:
			return fmt.Errorf("%s describes generation %d, stack is at %d", condType, c.ObservedGeneration, s.Generation)
		}
		return nil
	})
	return s
}

func describeConditions(s *tradingv1alpha1.TradingStack) string {
	var parts []string
	for _, c := range s.Status.Conditions {
		parts = append(parts, fmt.Sprintf("%s=%s(%s)", c.Type, c.Status, c.Reason))
	}
	return strings.Join(parts, " ")
}

// waitFor waits until obj exists and returns it.
func waitFor[T client.Object](t *testing.T, obj T, ns, name string) T {
	t.Helper()
	eventually(t, fmt.Sprintf("%T %s exists", obj, name), func() error {
		return k8s.Get(bg, key(ns, name), obj)
	})
	return obj
}

// --- what a kubelet and the controller-manager would write ---

func markStatefulSetReady(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "mark StatefulSet "+name+" ready", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, name), sts); err != nil {
			return err
		}
		sts.Status = appsv1.StatefulSetStatus{
			ObservedGeneration: sts.Generation, Replicas: 1, ReadyReplicas: 1, CurrentReplicas: 1,
			UpdatedReplicas: 1, AvailableReplicas: 1,
		}
		return k8s.Status().Update(bg, sts)
	})
}

func markDeploymentReady(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "mark Deployment "+name+" ready", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		n := int32(1)
		if d.Spec.Replicas != nil {
			n = *d.Spec.Replicas
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: n, ReadyReplicas: n, AvailableReplicas: n, UpdatedReplicas: n,
			Conditions: deploymentConditions(true, "NewReplicaSetAvailable"),
		}
		return k8s.Status().Update(bg, d)
	})
}

// deploymentConditions are the conditions the Deployment controller writes: Available as
// available says; Progressing with reason progress, False when that is
// ProgressDeadlineExceeded (it gave up on the rollout); then more (replicaFailure, say).
func deploymentConditions(available bool, progress string, more ...appsv1.DeploymentCondition) []appsv1.DeploymentCondition {
	now := metav1.Now()
	a := appsv1.DeploymentCondition{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable",
		Message: "Deployment has minimum availability.", LastUpdateTime: now, LastTransitionTime: now}
	if !available {
		a.Status, a.Reason, a.Message = corev1.ConditionFalse, "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
	}
	p := appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: progress, LastUpdateTime: now, LastTransitionTime: now}
	if progress == "ProgressDeadlineExceeded" {
		p.Status, p.Message = corev1.ConditionFalse, "ReplicaSet has timed out progressing."
	}
	return append([]appsv1.DeploymentCondition{a, p}, more...)
}

// replicaFailure is the condition the Deployment controller writes when the API server
// refuses its pods, with the answer (refusal).
func replicaFailure(refusal string) appsv1.DeploymentCondition {
	now := metav1.Now()
	return appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate", Message: refusal,
		LastUpdateTime: now, LastTransitionTime: now}
}

// migrationJobs lists the stack's migration Jobs (NAME-migrate-HASH).
func migrationJobs(t *testing.T, ns, stack string) []batchv1.Job {
	t.Helper()
	list := &batchv1.JobList{}
	if err := k8s.List(bg, list, client.InNamespace(ns)); err != nil {
		t.Fatalf("list jobs: %v", err)
	}
	var out []batchv1.Job
	for _, j := range list.Items {
		if strings.HasPrefix(j.Name, stack+"-migrate-") {
			out = append(out, j)
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out
}

// waitMigrationJob waits for the migration Job that runs image.
func waitMigrationJob(t *testing.T, ns, stack, image string) *batchv1.Job {
	t.Helper()
	var found *batchv1.Job
	eventually(t, "migration Job for "+image, func() error {
		for _, j := range migrationJobs(t, ns, stack) {
			for _, c := range j.Spec.Template.Spec.Containers {
				if c.Image == image {
					found = &j
					return nil
				}
			}
		}
		return fmt.Errorf("no migration Job runs %s", image)
	})
	return found
}

// finishJob writes a terminal Job status as the Job controller of Kubernetes
// 1.37 would (the API server validates it).
func finishJob(t *testing.T, ns, name string, succeeded bool) {
	t.Helper()
	eventually(t, "finish Job "+name, func() error {
		j := &batchv1.Job{}
		if err := k8s.Get(bg, key(ns, name), j); err != nil {
			return err
		}
		start := metav1.NewTime(time.Now().Add(-2 * time.Second))
		now := metav1.Now()
		if succeeded {
			j.Status = batchv1.JobStatus{
				StartTime: &start, CompletionTime: &now, Succeeded: 1,
				Conditions: []batchv1.JobCondition{
					{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods", LastProbeTime: now, LastTransitionTime: now},
					{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods", LastProbeTime: now, LastTransitionTime: now},
				},
			}
		} else {
			j.Status = batchv1.JobStatus{
				StartTime: &start, Failed: 1,
				Conditions: []batchv1.JobCondition{
					{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastProbeTime: now, LastTransitionTime: now},
					{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastProbeTime: now, LastTransitionTime: now},
				},
			}
		}
		return k8s.Status().Update(bg, j)
	})
}

// migrationPod plays the Job controller and kubelet for one attempt of job: a pod with the
// Job's labels whose migrate container ended with exitCode and message. Pods are listed in
// the order of their names, so attempt decides which one the operator meets first.
func migrationPod(t *testing.T, job *batchv1.Job, attempt int, exitCode int32, message string) {
	t.Helper()
	pod := createMigrationPod(t, job, fmt.Sprintf("%s-%d", job.Name, attempt))
	now := metav1.Now()
	pod.Status = corev1.PodStatus{Phase: corev1.PodSucceeded, ContainerStatuses: []corev1.ContainerStatus{{
		Name: job.Spec.Template.Spec.Containers[0].Name, Image: job.Spec.Template.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Message: message, StartedAt: now, FinishedAt: now}},
	}}}
	if exitCode != 0 {
		pod.Status.Phase = corev1.PodFailed
	}
	if err := k8s.Status().Update(bg, pod); err != nil {
		t.Fatalf("migration pod status: %v", err)
	}
}

// createMigrationPod plays the Job controller: a pod of job named name, with the Job's
// labels and template, and no status yet.
func createMigrationPod(t *testing.T, job *batchv1.Job, name string) *corev1.Pod {
	t.Helper()
	// The ServiceAccount admission plugin wants the namespace's default account, which no
	// controller makes here.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: job.Namespace, Name: "default"}}
	if err := k8s.Create(bg, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: job.Namespace, Name: name, Labels: job.Spec.Template.Labels},
		Spec:       job.Spec.Template.Spec,
	}
	if err := k8s.Create(bg, pod); err != nil {
		t.Fatalf("create migration pod: %v", err)
	}
	return pod
}

// makeReady plays kubelet for a stack with managed PostgreSQL and Redis until
// the stack is Ready.
func makeReady(t *testing.T, ns, name string) *tradingv1alpha1.TradingStack {
	t.Helper()
	untilRuntime(t, ns, name)
	markDeploymentReady(t, ns, name+"-api")
	return waitCondition(t, ns, name, tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// untilRuntime plays kubelet for a stack's database and cache and lets its migration succeed,
// and returns the runtime's Deployment once it exists, not yet available: the point where a
// test decides what the runtime's pods do.
func untilRuntime(t *testing.T, ns, name string) *appsv1.Deployment {
	t.Helper()
	s := getStack(t, ns, name)
	if !s.ExternalPostgres() {
		waitFor(t, &appsv1.StatefulSet{}, ns, name+"-postgres")
		markStatefulSetReady(t, ns, name+"-postgres")
	}
	if s.ManagedRedis() {
		waitFor(t, &appsv1.Deployment{}, ns, name+"-redis")
		markDeploymentReady(t, ns, name+"-redis")
	}
	job := waitMigrationJob(t, ns, name, s.RuntimeImage())
	if _, state := jobOutcome(job); state == jobRunning {
		finishJob(t, ns, job.Name, true)
	}
	return waitFor(t, &appsv1.Deployment{}, ns, name+"-api")
}

// reconcileDirectly runs passes of a reconciler wired like the manager's, so a
// test can count what a resync writes without waiting for an event.
func reconcileDirectly(t *testing.T, ns, name string, times int) ctrl.Result {
	t.Helper()
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	r := NewTradingStackReconciler(mgr, 1)
	var res ctrl.Result
	for i, stale := 0, 0; i < times; i++ {
		waitCachedStack(t, mgr, ns, name)
		var err error
		res, err = r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, name)})
		if err != nil {
			t.Fatalf("reconcile %s: %v", name, err)
		}
		// A pass that met a cache behind the manager's latest status write wrote nothing and
		// asks to run again: it does not count.
		if res.RequeueAfter == staleStackRetry && stale < 50 {
			stale++
			i--
			time.Sleep(staleStackRetry)
		}
	}
	return res
}

// waitCachedStack waits until mgr's cache holds the stack as the API server has it. Each
// reconcileDirectly builds a reconciler of its own, which does not know the status write its
// previous pass made (the manager's reconciler remembers it, writtenFrom): a pass that read
// the stack from before that write saw its own outcome as unchanged and wrote nothing,
// leaving the previous pass's status in place (MigrationPodWaiting read "its pod waits"
// after the pod ran, in CI).
func waitCachedStack(t *testing.T, mgr ctrl.Manager, ns, name string) {
	t.Helper()
	eventually(t, "the cache holds stack "+name, func() error {
		live, cached := &tradingv1alpha1.TradingStack{}, &tradingv1alpha1.TradingStack{}
		if err := k8s.Get(bg, key(ns, name), live); err != nil {
			return err
		}
		if err := mgr.GetCache().Get(bg, key(ns, name), cached); err != nil {
			return err
		}
		if cached.ResourceVersion != live.ResourceVersion {
			return fmt.Errorf("cache at resourceVersion %s, API server at %s", cached.ResourceVersion, live.ResourceVersion)
		}
		return nil
	})
}

// childKinds are every kind of child the contract names.
var childKinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "Secret"},
	{Version: "v1", Kind: "ConfigMap"},
	{Version: "v1", Kind: "Service"},
	{Group: "apps", Version: "v1", Kind: "StatefulSet"},
	{Group: "apps", Version: "v1", Kind: "Deployment"},
	{Group: "batch", Version: "v1", Kind: "Job"},
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"},
	{Group: "autoscaling", Version: "v2", Kind: "HorizontalPodAutoscaler"},
	{Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicy"},
}

// resourceVersions maps "Kind/name" to resourceVersion for the stack and every
// object in the namespace of the kinds above (and the monitoring kinds when
// their CRDs exist).
func resourceVersions(t *testing.T, ns, stack string) map[string]string {
	t.Helper()
	out := map[string]string{}
	s := getStack(t, ns, stack)
	out["TradingStack/"+stack] = s.ResourceVersion
	kinds := append([]schema.GroupVersionKind(nil), childKinds...)
	kinds = append(kinds,
		schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"},
		schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"})
	for _, gvk := range kinds {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
		if err := k8s.List(bg, list, client.InNamespace(ns)); err != nil {
			if meta.IsNoMatchError(err) {
				continue
			}
			t.Fatalf("list %s: %v", gvk.Kind, err)
		}
		for _, o := range list.Items {
			out[gvk.Kind+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	return out
}

func hasControllerRef(obj metav1.Object, s *tradingv1alpha1.TradingStack) bool {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.UID == s.UID && ref.Controller != nil && *ref.Controller && ref.Kind == "TradingStack" {
			return true
		}
	}
	return false
}

// testCAPEM is a self-signed CA certificate as PEM, different on every call.
func testCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// stackEvents lists the events (events.k8s.io, as kubectl describe reads them) regarding the
// stack name in namespace ns.
func stackEvents(t *testing.T, ns, name string) []eventsv1.Event {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(bg, list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "TradingStack" && e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}
