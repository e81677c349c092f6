package controllers

import (
	"fmt"
	"strings"
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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testPodsRefusedSaid: a namespace's ResourceQuota refuses the pods of a Deployment (the
// ReplicaSet controller's create is forbidden, and the Deployment controller reports it in its
// ReplicaFailure condition). The stack says so in the component's condition, with the API
// server's answer, instead of "waiting for Deployment to become available", which no wait
// ends: Redis's CacheReady, the runtime's RuntimeAvailable on a new stack, and Degraded on a
// serving one that cannot scale up.
func testPodsRefusedSaid(t *testing.T) {
	ns := newNamespace(t)
	noPodsQuota(t, ns)
	createStack(t, newStack(ns, "pq"))
	waitFor(t, &appsv1.StatefulSet{}, ns, "pq-postgres")
	markStatefulSetReady(t, ns, "pq-postgres")

	redis := waitFor(t, &appsv1.Deployment{}, ns, "pq-redis")
	refusal := refusedPod(t, redis)
	setReplicaFailure(t, ns, "pq-redis", 0, refusal)
	waitConditionSays(t, ns, "pq", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheNotReady, "exceeded quota")

	markDeploymentReady(t, ns, "pq-redis")
	finishJob(t, ns, waitMigrationJob(t, ns, "pq", "registry.example.com/tradingd:v1").Name, true)
	api := waitFor(t, &appsv1.Deployment{}, ns, "pq-api")
	setReplicaFailure(t, ns, "pq-api", 0, refusedPod(t, api))
	waitConditionSays(t, ns, "pq", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonDeploymentUnavailable, "exceeded quota")

	// Serving on one pod of two: the second is refused.
	markDeploymentReady(t, ns, "pq-api")
	waitCondition(t, ns, "pq", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	setReplicaFailure(t, ns, "pq-api", 1, refusedPod(t, api))
	waitConditionSays(t, ns, "pq", tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonReplicasUnavailable, "exceeded quota")

	// The quota raised, the pods come: nothing is said of the refusal any more.
	markDeploymentReady(t, ns, "pq-api")
	s := waitCondition(t, ns, "pq", tradingv1alpha1.ConditionDegraded, metav1.ConditionFalse, tradingv1alpha1.ReasonStable)
	for _, c := range s.Status.Conditions {
		if strings.Contains(c.Message, "quota") {
			t.Errorf("%s still speaks of the refusal: %s", c.Type, c.Message)
		}
	}
}

// refusedPod is the API server's answer to a pod of d's template (what the ReplicaSet
// controller meets): the namespace's quota refuses it.
func refusedPod(t *testing.T, d *appsv1.Deployment) string {
	t.Helper()
	return refusedPodOf(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, GenerateName: d.Name + "-6d4cf56db6-", Labels: d.Spec.Template.Labels},
		Spec: d.Spec.Template.Spec})
}

// refusedPodOf is the API server's answer to pod, as a controller creating it meets it: the
// namespace's quota refuses it.
func refusedPodOf(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: "default"}}
	_ = k8s.Create(bg, sa) // the ServiceAccount admission plugin wants it; no controller makes it here
	var msg string
	eventually(t, "the quota refuses pod "+pod.Name+pod.GenerateName, func() error {
		probe := pod.DeepCopy()
		err := k8s.Create(bg, probe)
		if err == nil {
			_ = k8s.Delete(bg, probe)
			return fmt.Errorf("pod admitted")
		}
		if !strings.Contains(err.Error(), "exceeded quota") {
			return err
		}
		msg = err.Error()
		return nil
	})
	return msg
}

// noPodsQuota makes a ResourceQuota of no pods in ns, with the status the quota controller
// would write (there is none here): nothing used yet. The quota admission plugin judges by it.
func noPodsQuota(t *testing.T, ns string) {
	t.Helper()
	quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pods"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}}}
	if err := k8s.Create(bg, quota); err != nil {
		t.Fatal(err)
	}
	quota.Status = corev1.ResourceQuotaStatus{Hard: quota.Spec.Hard, Used: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}}
	if err := k8s.Status().Update(bg, quota); err != nil {
		t.Fatal(err)
	}
}

// refuseServiceMonitors makes an admission policy refuse every ServiceMonitor created in ns
// with message, and waits until it does.
func refuseServiceMonitors(t *testing.T, ns, message string) {
	t.Helper()
	refuseInNamespace(t, ns, "monitoring.coreos.com", "servicemonitors", admissionregistrationv1.Create, message,
		func() error {
			probe := &monitoringv1.ServiceMonitor{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"},
				Spec: monitoringv1.ServiceMonitorSpec{Endpoints: []monitoringv1.Endpoint{{Port: "metrics"}}}}
			err := k8s.Create(bg, probe)
			if err == nil {
				_ = k8s.Delete(bg, probe)
			}
			return err
		})
}

// setReplicaFailure writes the status the Deployment controller writes for a Deployment of
// whose pods ready are ready and the others refused: ReplicaFailure FailedCreate with the
// API server's answer, Available while at least one is.
func setReplicaFailure(t *testing.T, ns, name string, ready int32, refusal string) {
	t.Helper()
	eventually(t, "Deployment "+name+" with pods refused", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: ready, UpdatedReplicas: ready, ReadyReplicas: ready, AvailableReplicas: ready,
			UnavailableReplicas: *d.Spec.Replicas - ready,
			Conditions:          deploymentConditions(ready > 0, "ReplicaSetUpdated", replicaFailure(refusal)),
		}
		return k8s.Status().Update(bg, d)
	})
}

// setRolloutRefused writes the status the Deployment controller writes for a rollout of name
// whose two old pods serve while the new template's first pod is refused (the API server's
// answer in ReplicaFailure FailedCreate); stuck: past its progress deadline.
func setRolloutRefused(t *testing.T, ns, name, refusal string, stuck bool) {
	t.Helper()
	eventually(t, "Deployment "+name+" rolling out with its new pod refused", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		progress := "ReplicaSetUpdated"
		if stuck {
			progress = "ProgressDeadlineExceeded"
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 2, UpdatedReplicas: 0, ReadyReplicas: 2, AvailableReplicas: 2,
			Conditions: deploymentConditions(true, progress, replicaFailure(refusal)),
		}
		return k8s.Status().Update(bg, d)
	})
}

// waitConditionSays waits for the condition (as waitCondition) with text in its message.
func waitConditionSays(t *testing.T, ns, name, condType string, status metav1.ConditionStatus, reason, text string) *tradingv1alpha1.TradingStack {
	t.Helper()
	var s *tradingv1alpha1.TradingStack
	eventually(t, fmt.Sprintf("%s %s=%s %s saying %q", name, condType, status, reason, text), func() error {
		s = getStack(t, ns, name)
		c := condition(s, condType)
		switch {
		case c == nil:
			return fmt.Errorf("no %s condition; conditions: %s", condType, describeConditions(s))
		case c.Status != status || c.Reason != reason || !strings.Contains(c.Message, text):
			return fmt.Errorf("%s is %s/%s: %s", condType, c.Status, c.Reason, c.Message)
		case c.ObservedGeneration != s.Generation:
			return fmt.Errorf("%s describes generation %d, stack is at %d", condType, c.ObservedGeneration, s.Generation)
		}
		return nil
	})
	return s
}

// testRefusedChildKeepsOthers: an admission policy of the cluster refuses the stack's
// PodDisruptionBudgets (as Gatekeeper or Kyverno policies on PDBs do). The stack says which
// child was refused and why, and the children that do not build on it are still made: the
// HorizontalPodAutoscaler (without it autoscaling silently does not happen), the
// ServiceMonitor and the PrometheusRule (without them nobody is alerted). Lifted, the PDB
// comes and the stack is Ready.
func testRefusedChildKeepsOthers(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	lift := refuseInNamespace(t, ns, "policy", "poddisruptionbudgets", admissionregistrationv1.Create, "PodDisruptionBudgets need the platform team's approval",
		func() error {
			probe := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"}}
			err := k8s.Create(bg, probe)
			if err == nil {
				_ = k8s.Delete(bg, probe)
			}
			return err
		})
	createStack(t, newStack(ns, "rk", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4}
	}))
	untilRuntime(t, ns, "rk")
	markDeploymentReady(t, ns, "rk-api")

	s := waitConditionSays(t, ns, "rk", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed,
		"PodDisruptionBudgets need the platform team's approval")
	if !strings.Contains(condition(s, tradingv1alpha1.ConditionReady).Message, "apply PodDisruptionBudget "+ns+"/rk-api") {
		t.Errorf("Ready does not name the refused child: %s", condition(s, tradingv1alpha1.ConditionReady).Message)
	}
	waitFor(t, &autoscalingv2.HorizontalPodAutoscaler{}, ns, "rk-api")
	waitFor(t, &monitoringv1.ServiceMonitor{}, ns, "rk-api")
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "rk-alerts")
	waitCondition(t, ns, "rk", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)

	lift()
	// A change of the stack retries at once (the backoff would, later).
	updateStack(t, ns, "rk", func(s *tradingv1alpha1.TradingStack) { s.Annotations = map[string]string{"retry": "1"} })
	waitFor(t, &policyv1.PodDisruptionBudget{}, ns, "rk-api")
	waitCondition(t, ns, "rk", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// testDeletedDuringPass: a stack deleted while a pass runs (the pass read it just before) is
// no failure: the pass's status write finds nothing to write to, and that is not logged as a
// reconcile error nor counted in controller_runtime_reconcile_errors_total, where an alert on
// the operator's errors would fire for every stack a pipeline deletes.
func testDeletedDuringPass(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "gone"))
	waitCondition(t, ns, "gone", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady)
	read := getStack(t, ns, "gone")
	if err := k8s.Delete(bg, read); err != nil {
		t.Fatal(err)
	}
	read.Status = tradingv1alpha1.TradingStackStatus{} // as read before its first status: the pass has a status to write
	if _, _, err := reconcileStale(t, ns, "gone", read); err != nil {
		t.Errorf("a pass on a stack deleted meanwhile failed: %v", err)
	}
}

// testTerminatingChildLeftToGo: a child the spec no longer wants is deleted once; while a
// finalizer of someone else holds it (a backup or policy tool's), a pass neither deletes it
// again nor says again that it deleted it: a Ready stack stays quiet at rest, and the event
// is not repeated on every pass. Its removal, when the finalizer goes, wakes no error.
func testTerminatingChildLeftToGo(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "tc"))
	makeReady(t, ns, "tc")
	eventually(t, "a finalizer of another tool on the PodDisruptionBudget", func() error {
		pdb := &policyv1.PodDisruptionBudget{}
		if err := k8s.Get(bg, key(ns, "tc-api"), pdb); err != nil {
			return err
		}
		pdb.Finalizers = append(pdb.Finalizers, "backup.example.com/hold")
		return k8s.Update(bg, pdb)
	})
	updateStack(t, ns, "tc", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 1 })
	eventually(t, "the PodDisruptionBudget deleted, held by the finalizer", func() error {
		pdb := &policyv1.PodDisruptionBudget{}
		if err := k8s.Get(bg, key(ns, "tc-api"), pdb); err != nil {
			return err
		}
		if pdb.DeletionTimestamp == nil {
			return fmt.Errorf("not deleted yet")
		}
		return nil
	})
	makeReady(t, ns, "tc")
	reconcileDirectly(t, ns, "tc", 1)
	operatorWrites.settle(t, ns)

	mark := operatorWrites.mark()
	reconcileDirectly(t, ns, "tc", 3)
	operatorWrites.settle(t, ns)
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("a Ready stack whose PodDisruptionBudget waits for another's finalizer wrote at rest: %s", w)
	}

	// The finalizer goes: so does the PDB, and nothing makes it again.
	eventually(t, "the finalizer removed", func() error {
		pdb := &policyv1.PodDisruptionBudget{}
		if err := k8s.Get(bg, key(ns, "tc-api"), pdb); err != nil {
			return err
		}
		pdb.Finalizers = nil
		return k8s.Update(bg, pdb)
	})
	eventually(t, "the PodDisruptionBudget gone", func() error {
		if err := k8s.Get(bg, key(ns, "tc-api"), &policyv1.PodDisruptionBudget{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
}

// testRefusedRolloutStuckSaid: a serving stack in a namespace whose quota is used up is
// upgraded: the Deployment controller's surge pod is refused (ReplicaFailure), and ten
// minutes later it gives up on the rollout (ProgressDeadlineExceeded) while the refusal
// stands. RuntimeAvailable and Degraded, RolloutStuck, still carry the API server's answer:
// "the new pods do not become ready ... see the pods' events" sent the platform team looking
// for pods that were never created, and the quota, which no wait ends, went unsaid.
func testRefusedRolloutStuckSaid(t *testing.T) {
	ns, job := upgradingStack(t, "rs", "registry.example.com/tradingd:v2")
	noPodsQuota(t, ns)
	finishJob(t, ns, job.Name, true)
	waitAPIImage(t, ns, "rs", "registry.example.com/tradingd:v2")
	api := waitFor(t, &appsv1.Deployment{}, ns, "rs-api")
	refusal := refusedPod(t, api)

	// The two old pods serve; the new template's first pod is refused, and the deadline passed.
	setRolloutRefused(t, ns, "rs-api", refusal, true)
	s := waitConditionSays(t, ns, "rs", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonRolloutStuck, "exceeded quota")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); strings.Contains(c.Message, "do not become ready") {
		t.Errorf("RuntimeAvailable says the new pods do not become ready; none was created: %s", c.Message)
	}
	waitConditionSays(t, ns, "rs", tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonRolloutStuck, "exceeded quota")
}

// testRefusedServiceMonitorKeepsAlerts: an admission policy of the cluster refuses the
// stack's ServiceMonitor (a Gatekeeper or Kyverno rule on scrape settings, say). The
// PrometheusRule is made all the same: its TradingAPIDown alert (no series of NAME-api
// scraped) is then what tells someone that nothing scrapes the stack. MonitoringReady says
// which child was refused and why; the stack stays Ready (monitoring is not required).
func testRefusedServiceMonitorKeepsAlerts(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	refuseServiceMonitors(t, ns, "ServiceMonitors need a sampleLimit")
	createStack(t, newStack(ns, "sm"))
	makeReady(t, ns, "sm")
	waitConditionSays(t, ns, "sm", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed,
		"ServiceMonitors need a sampleLimit")
	waitFor(t, &monitoringv1.PrometheusRule{}, ns, "sm-alerts")
}

// testMigrationPodsRefusedSaid: the API server refuses the migration Job's pod (the namespace's
// ResourceQuota, used up by the pods that serve). The Job controller says so only in FailedCreate
// warning events on the Job, and retries until the Job's deadline, ten minutes later;
// MigrationsSucceeded says it too, with the newest refusal, instead of "running" alone. A pod
// created since ends it; a retry refused after that pod failed says it again.
func testMigrationPodsRefusedSaid(t *testing.T) {
	const image = "registry.example.com/tradingd:v2"
	ns, job := upgradingStack(t, "mq", image)
	noPodsQuota(t, ns)
	refusal := refusedPodOf(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: job.Name + "-", Labels: job.Spec.Template.Labels},
		Spec: job.Spec.Template.Spec})
	recordFailedCreate(t, job, "job-controller", "Error creating: an earlier refusal", time.Now().Add(-time.Minute))
	recordFailedCreate(t, waitMigrationJob(t, ns, "mq", "registry.example.com/tradingd:v1"), "job-controller", "Error creating: another Job's refusal", time.Now())
	recordFailedCreate(t, job, "job-controller", "Error creating: "+refusal, time.Now())

	running := fmt.Sprintf("migration Job %s for image %s is running", job.Name, image)
	want := running + "; its pods cannot be created: " + shortReason("FailedCreate", "Error creating: "+refusal)
	waitMessage(t, ns, "mq", tradingv1alpha1.ConditionMigrationsSucceeded, func(msg string) error {
		if msg != want {
			return fmt.Errorf("says %q, want %q", msg, want)
		}
		return nil
	})
	if c := condition(getStack(t, ns, "mq"), tradingv1alpha1.ConditionMigrationsSucceeded); c.Status != metav1.ConditionUnknown || c.Reason != tradingv1alpha1.ReasonMigrationRunning {
		t.Errorf("MigrationsSucceeded %s/%s, want Unknown/MigrationRunning", c.Status, c.Reason)
	}

	// The quota raised, the Job controller's next try makes the pod: the refusal is over.
	if err := k8s.Delete(bg, &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pods"}}); err != nil {
		t.Fatal(err)
	}
	pod := createMigrationPod(t, job, job.Name+"-p1")
	reconcileDirectly(t, ns, "mq", 1)
	if c := condition(getStack(t, ns, "mq"), tradingv1alpha1.ConditionMigrationsSucceeded); c.Message != running {
		t.Errorf("a pod made since the refusal: MigrationsSucceeded says %q, want %q", c.Message, running)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodFailed}
	if err := k8s.Status().Update(bg, pod); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "mq", 1)
	if c := condition(getStack(t, ns, "mq"), tradingv1alpha1.ConditionMigrationsSucceeded); c.Message != running {
		t.Errorf("the pod made since the refusal failed: MigrationsSucceeded says %q, want %q", c.Message, running)
	}
	// Its retry, after the Job controller's back-off, is refused.
	recordFailedCreate(t, job, "job-controller", "Error creating: refused again", pod.CreationTimestamp.Add(10*time.Second))
	reconcileDirectly(t, ns, "mq", 1)
	if c, again := condition(getStack(t, ns, "mq"), tradingv1alpha1.ConditionMigrationsSucceeded), running+"; its pods cannot be created: FailedCreate: Error creating: refused again"; c.Message != again {
		t.Errorf("the retry refused: MigrationsSucceeded says %q, want %q", c.Message, again)
	}
}

// testDatabasePodsRefusedSaid: the API server refuses the managed PostgreSQL's pod (the
// namespace's ResourceQuota). The StatefulSet controller says so only in FailedCreate warning
// events on the StatefulSet, and retries for ever; DatabaseReady says it too, instead of
// "waiting for StatefulSet NAME-postgres to have a ready pod", which no wait ends. The event
// comes after the pass that made the StatefulSet, and nothing watches events: the operator
// reads them again while the StatefulSet has no pod. Once the pod exists, the refusal is over.
func testDatabasePodsRefusedSaid(t *testing.T) {
	ns := newNamespace(t)
	noPodsQuota(t, ns)
	createStack(t, newStack(ns, "dq"))
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, "dq-postgres")
	waitCondition(t, ns, "dq", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady)

	// The template's volumes name the claim the controller makes, and refused pods are
	// refused before the API server looks at those: one container is enough to be refused.
	refusal := refusedPodOf(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "dq-postgres-0", Labels: sts.Spec.Template.Labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: sts.Spec.Template.Spec.Containers[0].Image}}}})
	recordFailedCreate(t, sts, "statefulset-controller", "create Pod dq-postgres-0 in StatefulSet dq-postgres failed error: "+refusal, time.Now())

	waiting := "waiting for StatefulSet dq-postgres to have a ready pod"
	want := waiting + "; its pods cannot be created: " + shortReason("FailedCreate", "create Pod dq-postgres-0 in StatefulSet dq-postgres failed error: "+refusal)
	waitMessage(t, ns, "dq", tradingv1alpha1.ConditionDatabaseReady, func(msg string) error {
		if msg != want {
			return fmt.Errorf("says %q, want %q", msg, want)
		}
		return nil
	})

	// The quota raised, the pod is made: it starts, and DatabaseReady no longer speaks of the
	// refusal.
	if err := k8s.Delete(bg, &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pods"}}); err != nil {
		t.Fatal(err)
	}
	// The quota admission reads quotas from a cache of its own: right after the delete it can
	// still refuse the pod, as the StatefulSet controller would see and retry.
	eventually(t, "pod dq-postgres-0 created once the quota is gone", func() error {
		err := k8s.Create(bg, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "dq-postgres-0", Labels: sts.Spec.Template.Labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: sts.Spec.Template.Spec.Containers[0].Image}}}})
		if apierrors.IsForbidden(err) {
			return err
		}
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
	waitMessage(t, ns, "dq", tradingv1alpha1.ConditionDatabaseReady, func(msg string) error {
		if msg != waiting {
			return fmt.Errorf("says %q, want %q", msg, waiting)
		}
		return nil
	})
}

// recordFailedCreate records the warning the Job or StatefulSet controller (component) records
// on obj when the API server refuses what it creates: client-go's core/v1 recorder's event,
// involvedObject with obj's UID, reason FailedCreate, last seen at.
func recordFailedCreate(t *testing.T, obj client.Object, component, message string, at time.Time) {
	t.Helper()
	gvk, err := apiutil.GVKForObject(obj, k8s.Scheme())
	if err != nil {
		t.Fatal(err)
	}
	ts := metav1.NewTime(at)
	e := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: obj.GetNamespace(), Name: fmt.Sprintf("%s.%x", obj.GetName(), at.UnixNano())},
		InvolvedObject: corev1.ObjectReference{Kind: gvk.Kind, APIVersion: gvk.GroupVersion().String(), Namespace: obj.GetNamespace(),
			Name: obj.GetName(), UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion()},
		Type: corev1.EventTypeWarning, Reason: "FailedCreate", Message: message,
		Source: corev1.EventSource{Component: component}, FirstTimestamp: ts, LastTimestamp: ts, Count: 1,
	}
	if err := k8s.Create(bg, e); err != nil {
		t.Fatalf("record FailedCreate on %s: %v", obj.GetName(), err)
	}
}

// testTerminatingMigrationJobLeftToGo: a migration Job the operator deletes while another
// tool's finalizer holds it (a backup or policy tool's) is deleted once, not on every pass: an
// older image's Job pruned after an upgrade (the stack Ready, quiet at rest), and the Job
// deleted to run again for another database (which comes back once the finalizer goes).
func testTerminatingMigrationJobLeftToGo(t *testing.T) {
	const v2 = "registry.example.com/tradingd:v2"
	ns := newNamespace(t)
	createStack(t, newStack(ns, "tj"))
	makeReady(t, ns, "tj")
	old := waitMigrationJob(t, ns, "tj", "registry.example.com/tradingd:v1")
	holdJob(t, ns, old.Name)
	updateStack(t, ns, "tj", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = v2 })
	finishJob(t, ns, waitMigrationJob(t, ns, "tj", v2).Name, true)
	waitJobTerminating(t, ns, old.Name)
	waitAPIImage(t, ns, "tj", v2)
	makeReady(t, ns, "tj")
	reconcileDirectly(t, ns, "tj", 1)
	operatorWrites.settle(t, ns)
	mark := operatorWrites.mark()
	reconcileDirectly(t, ns, "tj", 3)
	operatorWrites.settle(t, ns)
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("a Ready stack whose old migration Job waits for another's finalizer wrote at rest: %s", w)
	}
	releaseJob(t, ns, old.Name)
	eventually(t, "the old migration Job gone", func() error {
		if err := k8s.Get(bg, key(ns, old.Name), &batchv1.Job{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})

	ns = newNamespace(t)
	createStack(t, newStack(ns, "tm"))
	makeReady(t, ns, "tm")
	job := waitMigrationJob(t, ns, "tm", "registry.example.com/tradingd:v1")
	holdJob(t, ns, job.Name)
	moveToExternalDatabase(t, ns, "tm", "external-db", "postgres://app:pw@db.example.com:5432/trading?sslmode=require")
	waitConditionSays(t, ns, "tm", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning, "the database changed")
	waitJobTerminating(t, ns, job.Name)
	reconcileDirectly(t, ns, "tm", 1)
	operatorWrites.settle(t, ns)
	mark = operatorWrites.mark()
	reconcileDirectly(t, ns, "tm", 3)
	operatorWrites.settle(t, ns)
	deletes := 0
	for _, w := range operatorWrites.since(mark, ns) {
		if strings.HasPrefix(w, "DELETE ") && strings.Contains(w, "/jobs/") {
			deletes++
		}
	}
	if deletes != 0 {
		t.Errorf("three passes while the migration Job to run again waits for another's finalizer sent %d DELETEs of it", deletes)
	}
	releaseJob(t, ns, job.Name)
	waitExternalMigrationJob(t, ns, "tm", "external-db")
}

// holdJob puts another tool's finalizer on the Job, as a backup or policy tool does.
func holdJob(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "a finalizer of another tool on Job "+name, func() error {
		j := &batchv1.Job{}
		if err := k8s.Get(bg, key(ns, name), j); err != nil {
			return err
		}
		j.Finalizers = append(j.Finalizers, "backup.example.com/hold")
		return k8s.Update(bg, j)
	})
}

// releaseJob is that tool done: its finalizer removed.
func releaseJob(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "the finalizer removed from Job "+name, func() error {
		j := &batchv1.Job{}
		if err := k8s.Get(bg, key(ns, name), j); err != nil {
			return err
		}
		j.Finalizers = nil
		return k8s.Update(bg, j)
	})
}

func waitJobTerminating(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "Job "+name+" deleted, held by the finalizer", func() error {
		j := &batchv1.Job{}
		if err := k8s.Get(bg, key(ns, name), j); err != nil {
			return err
		}
		if j.DeletionTimestamp == nil {
			return fmt.Errorf("not deleted yet")
		}
		return nil
	})
}

// testWaitingStackKeepsPolicyAndMonitoring: a serving stack moved to an external database whose
// Secret does not exist yet waits for it: the steps that build on the Secret do not run. Its
// PodDisruptionBudget, ServiceMonitor and PrometheusRule build on the spec alone, as they do
// when an earlier step fails: deleted by hand meanwhile, they are put back, and MonitoringReady
// is judged for the generation the stack waits at. The pass that stopped for the Secret skipped
// them, so the runtime that still served went without its disruption budget and its alerts for
// as long as the Secret was missing.
func testWaitingStackKeepsPolicyAndMonitoring(t *testing.T) {
	installMonitoringCRDs(t)
	ns := newNamespace(t)
	createStack(t, newStack(ns, "wp"))
	makeReady(t, ns, "wp")
	updateStack(t, ns, "wp", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"}}
	})
	waitCondition(t, ns, "wp", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
	waitCondition(t, ns, "wp", tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured)

	children := []client.Object{objectNamed(&policyv1.PodDisruptionBudget{}, ns, "wp-api"),
		objectNamed(&monitoringv1.ServiceMonitor{}, ns, "wp-api"), objectNamed(&monitoringv1.PrometheusRule{}, ns, "wp-alerts")}
	for _, o := range children {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Delete(bg, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range children {
		eventually(t, fmt.Sprintf("%T %s put back while the stack waits for its Secret", o, o.GetName()), func() error {
			got := o.DeepCopyObject().(client.Object)
			if err := k8s.Get(bg, client.ObjectKeyFromObject(o), got); err != nil {
				return err
			}
			if got.GetUID() == o.GetUID() {
				return fmt.Errorf("still the one deleted")
			}
			return nil
		})
	}
	s := getStack(t, ns, "wp")
	if c := condition(s, tradingv1alpha1.ConditionDatabaseReady); c.Reason != tradingv1alpha1.ReasonExternalSecretNotFound {
		t.Errorf("DatabaseReady %s: %s; the stack should still wait for its Secret", c.Reason, c.Message)
	}
}

// testNamespaceTerminatingQuiet: a stack whose namespace is being deleted (the namespace
// controller removes the stack with the rest, a moment later) meets the API server's refusal of
// every creation there ("unable to create new content in namespace ... because it is being
// terminated") when a pass makes a child again. Nothing is wrong: the pass ends without an
// error and without writing ApplyFailed. It returned the refusal, which was logged, retried with
// backoff until the namespace was gone, and counted in controller_runtime_reconcile_errors_total,
// where an alert on the operator's errors fired for every namespace a pipeline deleted.
func testNamespaceTerminatingQuiet(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "nt"))
	waitCondition(t, ns, "nt", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady)
	if err := k8s.Delete(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	// Without a namespace controller the namespace stays terminating with its content; a child
	// deleted (as that controller would, in whatever order) gives the pass something to create.
	np := objectNamed(&networkingv1.NetworkPolicy{}, ns, "nt-postgres")
	if err := k8s.Delete(bg, np); err != nil {
		t.Fatal(err)
	}
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	eventually(t, "the operator's cache without NetworkPolicy nt-postgres", func() error {
		if err := mgr.GetCache().Get(bg, client.ObjectKeyFromObject(np), &networkingv1.NetworkPolicy{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still cached (%v)", err)
		}
		return nil
	})
	eventually(t, "creation refused in the terminating namespace", func() error {
		probe := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"}}
		err := k8s.Create(bg, probe)
		if err == nil {
			_ = k8s.Delete(bg, probe)
			return fmt.Errorf("created")
		}
		if !apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return err
		}
		return nil
	})

	res, _, err := reconcileStale(t, ns, "nt")
	if err != nil {
		t.Errorf("a pass in a namespace being deleted failed: %v", err)
	}
	if res != (ctrl.Result{}) {
		t.Errorf("a pass in a namespace being deleted asks to run again: %+v", res)
	}
	if c := condition(getStack(t, ns, "nt"), tradingv1alpha1.ConditionReady); c != nil && c.Reason == tradingv1alpha1.ReasonApplyFailed {
		t.Errorf("Ready says the spec could not be applied in a namespace being deleted: %s", c.Message)
	}
}

// testHeldMigrationJobNotPolled: after a move to another database, the migration Job that ran
// on the old one is deleted to run again; another tool's finalizer (a backup or policy tool's)
// holds it, for as long as that tool takes. Its removal's event brings the next pass, so a
// pass that finds it held asks for no other; it asked to run again every 5 s, for as long as
// the Job was held. And MigrationsSucceeded says what it waits for, naming the finalizer: it
// said the Job "runs again", while nothing ran and nothing would until the tool let go.
func testHeldMigrationJobNotPolled(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "hj", func(s *tradingv1alpha1.TradingStack) {
		// Monitoring off: its own short look-again after a CRD change is not this test's.
		s.Spec.Monitoring.ServiceMonitor.Enabled = ptr.To(false)
		s.Spec.Monitoring.PrometheusRule.Enabled = ptr.To(false)
	}))
	makeReady(t, ns, "hj")
	job := waitMigrationJob(t, ns, "hj", "registry.example.com/tradingd:v1")
	holdJob(t, ns, job.Name)
	moveToExternalDatabase(t, ns, "hj", "external-db", "postgres://app:pw@db.example.com:5432/trading?sslmode=require")
	waitJobTerminating(t, ns, job.Name)

	res := reconcileDirectly(t, ns, "hj", 1)
	if res.RequeueAfter != 0 {
		t.Errorf("a pass that finds the migration Job held by another tool's finalizer asks to run again in %s", res.RequeueAfter)
	}
	waitConditionSays(t, ns, "hj", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning,
		"the database changed: migration Job "+job.Name+" runs again for image registry.example.com/tradingd:v1 once it is gone: "+
			"it is being deleted, held by finalizers backup.example.com/hold")

	releaseJob(t, ns, job.Name)
	waitExternalMigrationJob(t, ns, "hj", "external-db")
}
