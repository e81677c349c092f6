package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// setDeploymentStatus writes the runtime Deployment's status as the Deployment controller
// would in the middle of a rollout, and waits until the operator's cache holds it, so that
// the pass that follows reads it.
func setDeploymentStatus(t *testing.T, ns, name string, replicas, updated, ready int32) {
	t.Helper()
	setDeploymentStatusProgress(t, ns, name, replicas, updated, ready, "ReplicaSetUpdated")
}

// setDeploymentStatusProgress is setDeploymentStatus with the reason of the Deployment's
// Progressing condition (ProgressDeadlineExceeded: the controller gave up on the rollout).
func setDeploymentStatusProgress(t *testing.T, ns, name string, replicas, updated, ready int32, progress string) {
	t.Helper()
	d := &appsv1.Deployment{}
	eventually(t, "set Deployment "+name+" status", func() error {
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: ready, AvailableReplicas: ready, UnavailableReplicas: max(replicas-ready, 0),
			Conditions: deploymentConditions(true, progress),
		}
		return k8s.Status().Update(bg, d)
	})
	waitCachedDeployment(t, ns, name, "with the status written", func(c *appsv1.Deployment) bool {
		return c.Status.Replicas == replicas && c.Status.UpdatedReplicas == updated &&
			c.Status.ReadyReplicas == ready && rolloutStuck(c) == (progress == "ProgressDeadlineExceeded")
	})
}

// waitCachedDeployment waits until the operator's cache holds a Deployment name for which
// ok holds, so that the pass that follows reads what the test wrote. Not a resourceVersion:
// the operator may write the Deployment again meanwhile (its apply after a scale), and the
// cache then never holds the version the test wrote.
func waitCachedDeployment(t *testing.T, ns, name, what string, ok func(*appsv1.Deployment) bool) {
	t.Helper()
	mgrMu.Lock()
	cache := currentMgr.GetCache()
	mgrMu.Unlock()
	eventually(t, "the cache sees Deployment "+name+" "+what, func() error {
		cached := &appsv1.Deployment{}
		if err := cache.Get(bg, key(ns, name), cached); err != nil {
			return err
		}
		if !ok(cached) {
			return fmt.Errorf("not yet: generation %d, status %+v", cached.Generation, cached.Status)
		}
		return nil
	})
}

// wantRolloutStuck checks the conditions of a stack whose rollout the Deployment gave up on
// while the old pods serve: RuntimeAvailable and Degraded True, Progressing False, each
// with reason RolloutStuck.
func wantRolloutStuck(t *testing.T, s *tradingv1alpha1.TradingStack, what string) {
	t.Helper()
	for _, want := range []struct {
		typ    string
		status metav1.ConditionStatus
	}{
		{tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue},
		{tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue},
		{tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse},
	} {
		if c := condition(s, want.typ); c == nil || c.Status != want.status || c.Reason != tradingv1alpha1.ReasonRolloutStuck {
			t.Errorf("%s: %s %+v, want %s RolloutStuck", what, want.typ, c, want.status)
		}
	}
}

// upgradingStack makes a Ready stack name in a namespace of its own, then sets its runtime
// image to image, and returns the namespace and the migration Job that change made.
func upgradingStack(t *testing.T, name, image string, mutate ...func(*tradingv1alpha1.TradingStack)) (string, *batchv1.Job) {
	t.Helper()
	ns := newNamespace(t)
	createStack(t, newStack(ns, name, mutate...))
	makeReady(t, ns, name)
	updateStack(t, ns, name, func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = image })
	return ns, waitMigrationJob(t, ns, name, image)
}

func apiImageOf(t *testing.T, ns, stack string) string {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, stack+"-api"), d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

func waitAPIImage(t *testing.T, ns, stack, image string) {
	t.Helper()
	eventually(t, "runtime on "+image, func() error {
		if img := apiImageOf(t, ns, stack); img != image {
			return fmt.Errorf("runtime on %s", img)
		}
		return nil
	})
}

// testRolloutNotReportedDoneEarly: after an upgrade the runtime's rollout is done when every
// pod runs the new template. With one replica, the Deployment controller first adds the new
// pod (updatedReplicas 1) while the old one still serves (readyReplicas 1): a new image whose
// pod never becomes ready must not read "available with image v2", Progressing Stable.
// Likewise with two replicas, the last old pod still serving while the second new one starts.
func testRolloutNotReportedDoneEarly(t *testing.T) {
	ns, job := upgradingStack(t, "roll", "registry.example.com/tradingd:v2", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 1 })
	finishJob(t, ns, job.Name, true)
	waitAPIImage(t, ns, "roll", "registry.example.com/tradingd:v2")

	// The new pod was created and is not ready (crash-looping); the old one serves.
	setDeploymentStatus(t, ns, "roll-api", 2, 1, 1)
	reconcileDirectly(t, ns, "roll", 1)
	s := getStack(t, ns, "roll")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Reason != tradingv1alpha1.ReasonRollingOut {
		t.Errorf("one replica, new pod not ready, old pod serving: RuntimeAvailable %+v, want reason RollingOut", c)
	}
	// The runbook: Progressing True (Reconciling) while children are rolled out.
	if c := condition(s, tradingv1alpha1.ConditionProgressing); c == nil || c.Status != metav1.ConditionTrue || c.Reason != tradingv1alpha1.ReasonReconciling {
		t.Errorf("rollout under way: Progressing %+v, want True Reconciling", c)
	}

	// The Deployment gives up on the new pod (its progress deadline passed): the old pod
	// still serves, so the stack is Ready, but Degraded, and nothing is progressing.
	setDeploymentStatusProgress(t, ns, "roll-api", 2, 1, 1, "ProgressDeadlineExceeded")
	reconcileDirectly(t, ns, "roll", 1)
	s = getStack(t, ns, "roll")
	wantRolloutStuck(t, s, "rollout stuck")
	if c := condition(s, tradingv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue || s.Status.Phase != tradingv1alpha1.PhaseDegraded {
		t.Errorf("rollout stuck, old pod serving: Ready %+v, phase %s; want Ready True, phase Degraded", c, s.Status.Phase)
	}

	// Two replicas: the old ReplicaSet's last pod still runs beside the two new ones.
	updateStack(t, ns, "roll", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 2 })
	eventually(t, "replicas 2 applied", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "roll-api"), d); err != nil {
			return err
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			return fmt.Errorf("replicas %v", d.Spec.Replicas)
		}
		return nil
	})
	setDeploymentStatus(t, ns, "roll-api", 3, 2, 2)
	reconcileDirectly(t, ns, "roll", 1)
	s = getStack(t, ns, "roll")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Reason != tradingv1alpha1.ReasonRollingOut {
		t.Errorf("two replicas, an old pod still serving: RuntimeAvailable %+v, want reason RollingOut", c)
	}

	// Done: every pod is new and ready.
	setDeploymentStatus(t, ns, "roll-api", 2, 2, 2)
	reconcileDirectly(t, ns, "roll", 1)
	s = getStack(t, ns, "roll")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Reason != tradingv1alpha1.ReasonDeploymentAvailable {
		t.Errorf("rollout done: RuntimeAvailable %+v, want reason DeploymentAvailable", c)
	}
	if c := condition(s, tradingv1alpha1.ConditionProgressing); c == nil || c.Status != metav1.ConditionFalse || c.Reason != tradingv1alpha1.ReasonStable {
		t.Errorf("rollout done: Progressing %+v, want False Stable", c)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseReady {
		t.Errorf("rollout done: phase %s", s.Status.Phase)
	}
}

// testImageFlipsDuringMigration: B fails (quiet while it waits for the user), the spec goes
// back to A (Ready, runtime on A, B's Job removed, quiet); then B is asked again (a new Job)
// and C while B's Job still runs: B's success does not move the runtime, which goes to C once
// C's Job succeeded; B's Job is removed then.
func testImageFlipsDuringMigration(t *testing.T) {
	const a, b, c = "registry.example.com/tradingd:v1", "registry.example.com/tradingd:b", "registry.example.com/tradingd:c"
	ns := newNamespace(t)
	createStack(t, newStack(ns, "flip"))
	makeReady(t, ns, "flip")

	// B fails, back to A.
	updateStack(t, ns, "flip", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = b })
	jobB := waitMigrationJob(t, ns, "flip", b)
	finishJob(t, ns, jobB.Name, false)
	waitCondition(t, ns, "flip", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, tradingv1alpha1.ReasonMigrationFailed)
	// A failed migration is a state at rest too (it waits for the user): no writes, no timer.
	operatorWrites.settle(t, ns)
	mark := operatorWrites.mark()
	if res := reconcileDirectly(t, ns, "flip", 3); res.RequeueAfter != 0 {
		t.Errorf("a failed migration requeues after %s", res.RequeueAfter)
	}
	if w := operatorWrites.since(mark, ns); len(w) > 0 {
		t.Errorf("writes at rest after a failed migration: %v", w)
	}
	updateStack(t, ns, "flip", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = a })
	s := waitCondition(t, ns, "flip", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if s.Status.Phase != tradingv1alpha1.PhaseReady {
		t.Errorf("phase %s after going back to the serving image", s.Status.Phase)
	}
	if img := apiImageOf(t, ns, "flip"); img != a {
		t.Errorf("runtime on %s", img)
	}
	eventually(t, "B's failed Job removed", func() error {
		if err := k8s.Get(bg, key(ns, jobB.Name), &batchv1.Job{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	operatorWrites.settle(t, ns)
	mark = operatorWrites.mark()
	reconcileDirectly(t, ns, "flip", 3)
	if w := operatorWrites.since(mark, ns); len(w) > 0 {
		t.Errorf("writes at rest after going back: %v", w)
	}

	// B again (a new Job), then C while B's still runs; B then succeeds, C fails, then C
	// succeeds on a second Job.
	updateStack(t, ns, "flip", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = b })
	jobB = waitMigrationJob(t, ns, "flip", b)
	if _, st := jobOutcome(jobB); st != jobRunning {
		t.Fatalf("B's Job is the old failed one")
	}
	updateStack(t, ns, "flip", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Image = c })
	jobC := waitMigrationJob(t, ns, "flip", c)
	finishJob(t, ns, jobB.Name, true)
	time.Sleep(time.Second)
	if img := apiImageOf(t, ns, "flip"); img != a {
		t.Errorf("runtime moved to %s while C migrates", img)
	}
	s = waitCondition(t, ns, "flip", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning)
	if s.Status.Phase != tradingv1alpha1.PhaseMigrating {
		t.Errorf("phase %s while C migrates", s.Status.Phase)
	}
	finishJob(t, ns, jobC.Name, true)
	waitAPIImage(t, ns, "flip", c)
	markDeploymentReady(t, ns, "flip-api")
	s = waitCondition(t, ns, "flip", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if s.Status.Migration.Image != c || s.Status.Runtime.Image != c {
		t.Errorf("status after C: %+v", s.Status.Migration)
	}
	eventually(t, "B's Job removed", func() error {
		if err := k8s.Get(bg, key(ns, jobB.Name), &batchv1.Job{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
}

// testPausedDuringMigration: paused while B's Job runs; the Job finishes meanwhile; the runtime
// stays on A until unpaused, then moves to B.
func testPausedDuringMigration(t *testing.T) {
	const b = "registry.example.com/tradingd:b"
	ns, job := upgradingStack(t, "pm", b)
	updateStack(t, ns, "pm", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = true })
	waitCondition(t, ns, "pm", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
	finishJob(t, ns, job.Name, true)
	reconcileDirectly(t, ns, "pm", 2)
	if img := apiImageOf(t, ns, "pm"); img != "registry.example.com/tradingd:v1" {
		t.Errorf("paused stack's runtime moved to %s", img)
	}
	updateStack(t, ns, "pm", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = false })
	waitAPIImage(t, ns, "pm", b)
	markDeploymentReady(t, ns, "pm-api")
	s := waitCondition(t, ns, "pm", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	for _, c := range s.Status.Conditions {
		if c.ObservedGeneration != s.Generation {
			t.Errorf("condition %s at generation %d, stack at %d", c.Type, c.ObservedGeneration, s.Generation)
		}
	}
}

// testMigrationPodWaiting: a migration pod that cannot start (a mistyped image tag) is no
// failure to the Job controller until the Job's deadline, ten minutes later; meanwhile the
// condition says why the pod waits, not only "running".
func testMigrationPodWaiting(t *testing.T) {
	const typo = "registry.example.com/tradingd:v2-typo"
	ns, job := upgradingStack(t, "pw", typo)

	// The Job controller's pod, which the kubelet cannot start.
	pod := createMigrationPod(t, job, job.Name+"-x1")
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{
		Name: migrateContainer, Image: typo,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason: "ImagePullBackOff", Message: `Back-off pulling image "` + typo + `"`,
		}},
	}}}
	if err := k8s.Status().Update(bg, pod); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "pw", 1)
	c := condition(getStack(t, ns, "pw"), tradingv1alpha1.ConditionMigrationsSucceeded)
	if c == nil || c.Reason != tradingv1alpha1.ReasonMigrationRunning ||
		!strings.Contains(c.Message, `its pod waits: ImagePullBackOff: Back-off pulling image "`+typo+`"`) {
		t.Errorf("migration pod that cannot pull its image: %+v, want MigrationRunning saying why it waits", c)
	}

	// Once it runs, the condition says only that the Job runs.
	pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(bg, pod); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "pw", 1)
	if c := condition(getStack(t, ns, "pw"), tradingv1alpha1.ConditionMigrationsSucceeded); c == nil || strings.Contains(c.Message, "waits") {
		t.Errorf("migration pod running: %+v", c)
	}
}

// testFailedMigrationSaysWhy: a failed migration Job's condition says why its last attempt
// failed (how the migrate container exited: tradingd's error line, or with
// FallbackToLogsOnError its logs' tail), not only that the Job reached its backoff limit. The
// failed pods are kept; a pass at rest writes nothing; once they are gone the condition says
// what the Job says, as before.
func testFailedMigrationSaysWhy(t *testing.T) {
	ns, job := upgradingStack(t, "fw", "registry.example.com/tradingd:v2")
	// Two attempts; pods are listed by name, so the newest comes last: it is the one that tells.
	migrationPod(t, job, 1, 1, "tradingd: migrate: connection reset by peer\n")
	// creationTimestamp has whole seconds: the second attempt is a second newer.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	migrationPod(t, job, 2, 2, `{"level":"INFO","msg":"migrating"}`+"\n"+
		"tradingd: migrate: postgres: migrate: ERROR: permission denied for schema public (SQLSTATE 42501)\n")
	finishJob(t, ns, job.Name, false)

	failed := fmt.Sprintf("migration Job %s failed: BackoffLimitExceeded: Job has reached the specified backoff limit", job.Name)
	const serving = "; the runtime keeps serving image registry.example.com/tradingd:v1"
	want := failed + "; the container migrate exited with code 2: tradingd: migrate: postgres: migrate: ERROR: permission denied for schema public (SQLSTATE 42501)" + serving
	eventually(t, "MigrationsSucceeded says why the last attempt failed", func() error {
		c := condition(getStack(t, ns, "fw"), tradingv1alpha1.ConditionMigrationsSucceeded)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != tradingv1alpha1.ReasonMigrationFailed || c.Message != want {
			return fmt.Errorf("MigrationsSucceeded %+v, want MigrationFailed %q", c, want)
		}
		return nil
	})

	// At rest (it waits for the user): the same message, no write, no timer.
	operatorWrites.settle(t, ns)
	mark := operatorWrites.mark()
	if res := reconcileDirectly(t, ns, "fw", 3); res.RequeueAfter != 0 {
		t.Errorf("a failed migration requeues after %s", res.RequeueAfter)
	}
	if w := operatorWrites.since(mark, ns); len(w) > 0 {
		t.Errorf("writes at rest after a failed migration: %v", w)
	}

	// The pods gone (deleted by hand, or a TTL): what the Job says, as before.
	if err := k8s.DeleteAllOf(bg, &corev1.Pod{}, client.InNamespace(ns), client.MatchingLabels(job.Spec.Template.Labels),
		client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	reconcileDirectly(t, ns, "fw", 1)
	if c := condition(getStack(t, ns, "fw"), tradingv1alpha1.ConditionMigrationsSucceeded); c == nil || c.Message != failed+serving {
		t.Errorf("MigrationsSucceeded %+v once the pods are gone, want %q", c, failed+serving)
	}
}

// testStuckRolloutThroughScale: a stuck rollout of an autoscaled stack stays RolloutStuck when
// the HPA scales the Deployment (its generation moves; the Deployment controller has not
// observed it yet, and a scale does not reset its verdict): no flip of Degraded and
// Progressing, with their writes and events, for the moment of every scale.
func testStuckRolloutThroughScale(t *testing.T) {
	ns, job := upgradingStack(t, "hf", "registry.example.com/tradingd:v2", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4}
	})
	finishJob(t, ns, job.Name, true)
	waitAPIImage(t, ns, "hf", "registry.example.com/tradingd:v2")
	setDeploymentStatusProgress(t, ns, "hf-api", 3, 1, 2, "ProgressDeadlineExceeded")
	reconcileDirectly(t, ns, "hf", 1)
	if c := condition(getStack(t, ns, "hf"), tradingv1alpha1.ConditionDegraded); c == nil || c.Reason != tradingv1alpha1.ReasonRolloutStuck {
		t.Fatalf("stuck: Degraded %+v", c)
	}

	// The HPA scales to 3.
	d := &appsv1.Deployment{}
	eventually(t, "scale to 3", func() error {
		if err := k8s.Get(bg, key(ns, "hf-api"), d); err != nil {
			return err
		}
		d.Spec.Replicas = ptr.To[int32](3)
		return k8s.Update(bg, d)
	})
	waitCachedDeployment(t, ns, "hf-api", "scaled to 3", func(c *appsv1.Deployment) bool {
		return c.Spec.Replicas != nil && *c.Spec.Replicas == 3
	})
	reconcileDirectly(t, ns, "hf", 1)
	wantRolloutStuck(t, getStack(t, ns, "hf"), "stuck rollout, scaled by the HPA")
}

// testStuckRolloutNewTemplate: a stuck rollout, then the user changes the spec so
// the pod template changes (a fix). Until the Deployment controller observes the new
// generation, its Progressing verdict is the OLD template's: the stack must not read
// RolloutStuck for the new generation.
func testStuckRolloutNewTemplate(t *testing.T) {
	ns, job := upgradingStack(t, "nt", "registry.example.com/tradingd:v2", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 1 })
	finishJob(t, ns, job.Name, true)
	waitAPIImage(t, ns, "nt", "registry.example.com/tradingd:v2")
	setDeploymentStatusProgress(t, ns, "nt-api", 2, 1, 1, "ProgressDeadlineExceeded")
	reconcileDirectly(t, ns, "nt", 1)
	wantRolloutStuck(t, getStack(t, ns, "nt"), "stuck")

	before := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "nt-api"), before); err != nil {
		t.Fatal(err)
	}
	// A template change (the ConfigMap's hash in the pod template).
	updateStack(t, ns, "nt", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Auth.AccessTokenTTL = "30m" })
	d := &appsv1.Deployment{}
	eventually(t, "new template applied", func() error {
		if err := k8s.Get(bg, key(ns, "nt-api"), d); err != nil {
			return err
		}
		if d.Generation == before.Generation {
			return fmt.Errorf("generation %d", d.Generation)
		}
		return nil
	})
	waitCachedDeployment(t, ns, "nt-api", "with the new template", func(c *appsv1.Deployment) bool { return c.Generation >= d.Generation })
	reconcileDirectly(t, ns, "nt", 1)
	s := getStack(t, ns, "nt")
	c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable)
	p := condition(s, tradingv1alpha1.ConditionProgressing)
	if c == nil || p == nil || c.Reason == tradingv1alpha1.ReasonRolloutStuck || p.Status == metav1.ConditionFalse {
		t.Errorf("new template not yet observed by the Deployment controller reads stuck: RuntimeAvailable %+v Progressing %+v", c, p)
	}
}

// testFirstRolloutStuckSaid: a new stack whose runtime pods never become ready (they crash at
// start, or an image the nodes cannot pull once the migration ran) until the Deployment
// controller gives up on the rollout (ProgressDeadlineExceeded, no pod available). Nothing
// will progress until someone acts: the stack must not read "waiting", Progressing True and
// phase Provisioning for good, but say that the rollout made no progress within its deadline
// (RuntimeAvailable False RolloutStuck, Progressing False) and, never having served, be
// Failed. Once pods become available it is Ready.
func testFirstRolloutStuckSaid(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "fr"))
	untilRuntime(t, ns, "fr")
	waitCondition(t, ns, "fr", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonDeploymentUnavailable)

	eventually(t, "Deployment fr-api past its progress deadline with no pod available", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "fr-api"), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 2, UpdatedReplicas: 2, UnavailableReplicas: 2,
			Conditions: deploymentConditions(false, "ProgressDeadlineExceeded"),
		}
		return k8s.Status().Update(bg, d)
	})
	s := waitConditionSays(t, ns, "fr", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonRolloutStuck, "ProgressDeadlineExceeded")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); !strings.Contains(c.Message, "fr-api") || strings.HasPrefix(c.Message, "waiting") {
		t.Errorf("RuntimeAvailable %q: want it to name the Deployment and say it gave up, not that it waits", c.Message)
	}
	if c := condition(s, tradingv1alpha1.ConditionProgressing); c == nil || c.Status != metav1.ConditionFalse || c.Reason != tradingv1alpha1.ReasonRolloutStuck {
		t.Errorf("Progressing %+v: want False RolloutStuck (nothing progresses until someone acts)", c)
	}
	if c := condition(s, tradingv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Ready %+v", c)
	}
	if s.Status.Phase != tradingv1alpha1.PhaseFailed {
		t.Errorf("phase %q of a stack that never served and whose first rollout the Deployment gave up on, want Failed", s.Status.Phase)
	}

	operatorWrites.settle(t, ns)
	warned := false
	for _, e := range stackEvents(t, ns, "fr") {
		warned = warned || (e.Type == corev1.EventTypeWarning && e.Reason == tradingv1alpha1.ReasonRolloutStuck)
	}
	if !warned {
		t.Errorf("no Warning event RolloutStuck for kubectl describe")
	}

	// The cause fixed (the pods become ready): Ready.
	markDeploymentReady(t, ns, "fr-api")
	s = waitCondition(t, ns, "fr", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if s.Status.Phase != tradingv1alpha1.PhaseReady {
		t.Errorf("phase %q once the pods are ready", s.Status.Phase)
	}
}
