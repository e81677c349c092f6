package controllers

import (
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// keptText is what DatabaseReady or CacheReady says while a managed backend the spec left is
// kept for the runtime.
const keptText = "is kept while the runtime may still use it"

// managedPostgres and managedRedis are the objects of a stack's managed backends.
func managedPostgres(ns, stack string) []client.Object {
	return []client.Object{objectNamed(&appsv1.StatefulSet{}, ns, stack+"-postgres"),
		objectNamed(&corev1.Service{}, ns, stack+"-postgres"), objectNamed(&networkingv1.NetworkPolicy{}, ns, stack+"-postgres")}
}

func managedRedis(ns, stack string) []client.Object {
	return []client.Object{objectNamed(&appsv1.Deployment{}, ns, stack+"-redis"),
		objectNamed(&corev1.Service{}, ns, stack+"-redis"), objectNamed(&networkingv1.NetworkPolicy{}, ns, stack+"-redis")}
}

// stillThere fails the test for each object that is gone or being deleted.
func stillThere(t *testing.T, what string, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil || o.GetDeletionTimestamp() != nil {
			t.Errorf("%s: %T %s gone (%v)", what, o, o.GetName(), err)
		}
	}
}

// waitGone waits until every object is deleted.
func waitGone(t *testing.T, what string, objs ...client.Object) {
	t.Helper()
	eventually(t, what, func() error {
		for _, o := range objs {
			if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%T %s still there (%v)", o, o.GetName(), err)
			}
		}
		return nil
	})
}

// runtimeGeneration is the generation of the stack's runtime Deployment now.
func runtimeGeneration(t *testing.T, ns, stack string) int64 {
	t.Helper()
	return waitFor(t, &appsv1.Deployment{}, ns, stack+"-api").Generation
}

// waitRuntimeTemplate waits until the operator changed the runtime Deployment after
// generation after (a new pod template, the start of a rollout).
func waitRuntimeTemplate(t *testing.T, ns, stack string, after int64) {
	t.Helper()
	eventually(t, "a new template of Deployment "+stack+"-api", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, stack+"-api"), d); err != nil {
			return err
		}
		if d.Generation <= after {
			return fmt.Errorf("still at generation %d", d.Generation)
		}
		return nil
	})
}

// runtimeRolloutAt plays the Deployment controller in the middle of a rollout of the
// Deployment's current template: replicas pods in all, updated of them of the new
// template, available of them available, terminating of an older one still shutting down.
func runtimeRolloutAt(t *testing.T, ns, name string, replicas, updated, available, terminating int32) {
	t.Helper()
	eventually(t, "rollout status of Deployment "+name, func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		now := metav1.Now()
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: available, AvailableReplicas: available, UnavailableReplicas: replicas - available,
			TerminatingReplicas: ptr.To(terminating),
			Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "ReplicaSetUpdated", LastUpdateTime: now, LastTransitionTime: now},
			},
		}
		return k8s.Status().Update(bg, d)
	})
}

// waitMessage waits until the stack's condition's message passes check.
func waitMessage(t *testing.T, ns, stack, condType string, check func(string) error) *tradingv1alpha1.TradingStack {
	t.Helper()
	var s *tradingv1alpha1.TradingStack
	eventually(t, stack+" "+condType+" message", func() error {
		s = getStack(t, ns, stack)
		c := condition(s, condType)
		if c == nil {
			return fmt.Errorf("no %s", condType)
		}
		if c.ObservedGeneration != s.Generation {
			return fmt.Errorf("%s of generation %d, stack at %d", condType, c.ObservedGeneration, s.Generation)
		}
		return check(c.Message)
	})
	return s
}

func saysKept(want ...string) func(string) error {
	return func(msg string) error {
		for _, w := range append([]string{keptText}, want...) {
			if !strings.Contains(msg, w) {
				return fmt.Errorf("message %q does not say %q", msg, w)
			}
		}
		return nil
	}
}

func saysNotKept(msg string) error {
	if strings.Contains(msg, keptText) {
		return fmt.Errorf("message %q still says a managed backend is kept", msg)
	}
	return nil
}

// testMoveRetiresAfterRollout: a serving stack moved off its managed Redis (here to
// disabled), then off its managed PostgreSQL (to an external database whose Secret exists),
// keeps each until its runtime no longer uses it. The runtime's pods read their configuration
// at start: those from before the move talk to the managed backend until the rollout has
// replaced them all (every pod of the new template, available, none of the old one left,
// not even terminating), and the database is also needed until the migration of the
// external one succeeded. Meanwhile CacheReady or DatabaseReady says why it is kept. They
// were deleted in the pass that found the Secrets: the old pods lost their Redis or database
// in the middle of the rollout.
func testMoveRetiresAfterRollout(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ra"))
	makeReady(t, ns, "ra")

	gen := runtimeGeneration(t, ns, "ra")
	updateStack(t, ns, "ra", func(s *tradingv1alpha1.TradingStack) { s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled })
	waitCondition(t, ns, "ra", tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheDisabled)
	waitRuntimeTemplate(t, ns, "ra", gen)
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "Redis disabled, the rollout not started", managedRedis(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment ra-redis", "Deployment ra-api"))

	runtimeRolloutAt(t, ns, "ra-api", 3, 1, 3, 0) // one new pod ready beside the two old ones
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "one pod of two rolled out", managedRedis(ns, "ra")...)
	runtimeRolloutAt(t, ns, "ra-api", 2, 2, 2, 1) // both new, an old one still shutting down
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "an old pod still terminating", managedRedis(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionCacheReady, saysKept("terminating"))

	markDeploymentReady(t, ns, "ra-api")
	waitGone(t, "managed Redis removed once the runtime rolled out without it", managedRedis(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionCacheReady, saysNotKept)
	stillThere(t, "managed PostgreSQL, still the stack's", managedPostgres(ns, "ra")...)

	gen = runtimeGeneration(t, ns, "ra")
	moveToExternalDatabase(t, ns, "ra", "corp-db", "postgres://app:pw@db.corp:5432/trading")
	waitCondition(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase)
	waitRuntimeTemplate(t, ns, "ra", gen)
	job := waitExternalMigrationJob(t, ns, "ra", "corp-db")
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "external database not migrated, the runtime not rolled out", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet ra-postgres", "migration"))

	// The runtime rolled out (the external database holds a restored dump, so the new pods
	// start), but the migration has not succeeded: the move is not complete, and a move back
	// must find the managed database.
	markDeploymentReady(t, ns, "ra-api")
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "the runtime rolled out, its migration not done", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysKept("migration"))

	finishJob(t, ns, job.Name, true)
	waitGone(t, "managed PostgreSQL removed once migrated and rolled out", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysNotKept)
	waitCondition(t, ns, "ra", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// testWrongDSNKeepsManaged: a serving stack moved to an external database whose DSN is wrong
// (a typo in the host): the migration Job fails and the runtime's new pod never becomes
// ready. The managed database stays, the old pods keep serving from it, and the stack says
// so (Degraded, DatabaseReady saying why the managed database is kept), writing nothing at
// rest. Moved back before the removal, the stack just keeps using the managed database, and
// the failed Job of the external one no longer reads as its migration record.
func testWrongDSNKeepsManaged(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "wd"))
	makeReady(t, ns, "wd")
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, "wd-postgres")

	gen := runtimeGeneration(t, ns, "wd")
	moveToExternalDatabase(t, ns, "wd", "corp-db", "postgres://app:pw@db.typo.corp:5432/trading")
	waitRuntimeTemplate(t, ns, "wd", gen)
	runtimeRolloutAt(t, ns, "wd-api", 3, 1, 2, 0) // the new pod cannot reach its database
	finishJob(t, ns, waitExternalMigrationJob(t, ns, "wd", "corp-db").Name, false)
	waitCondition(t, ns, "wd", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, tradingv1alpha1.ReasonMigrationFailed)
	reconcileDirectly(t, ns, "wd", 2)
	stillThere(t, "the external database's migration failed", managedPostgres(ns, "wd")...)

	s := waitMessage(t, ns, "wd", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet wd-postgres", "migration", "failed"))
	if c := condition(s, tradingv1alpha1.ConditionDegraded); s.Status.Phase != tradingv1alpha1.PhaseDegraded || c == nil ||
		c.Status != metav1.ConditionTrue || c.Reason != tradingv1alpha1.ReasonOldRuntimeServing || !strings.Contains(c.Message, "database it used before") {
		t.Errorf("phase %s, Degraded %+v; want Degraded OldRuntimeServing saying the runtime serves from the database it used before", s.Status.Phase, c)
	}
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("RuntimeAvailable %+v; the old pods serve", c)
	}
	for _, c := range []string{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ConditionDegraded} {
		t.Logf("%s: %s", c, condition(s, c).Message)
	}
	assertQuietNoRequeue(t, ns, "wd")

	gen = runtimeGeneration(t, ns, "wd")
	updateStack(t, ns, "wd", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.External = nil })
	waitRuntimeTemplate(t, ns, "wd", gen)
	markDeploymentReady(t, ns, "wd-api")
	s = waitCondition(t, ns, "wd", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if c := condition(s, tradingv1alpha1.ConditionDatabaseReady); c.Reason != tradingv1alpha1.ReasonDatabaseAvailable {
		t.Errorf("DatabaseReady %s: %s, want the managed database", c.Reason, c.Message)
	}
	if s.Status.Migration.Database != "managed" {
		t.Errorf("status.migration.database %q, want managed", s.Status.Migration.Database)
	}
	// The failed Job ran on the external database: it is no record of the managed one's
	// migration, and MigrationsSucceeded does not point at its failure.
	waitMessage(t, ns, "wd", tradingv1alpha1.ConditionMigrationsSucceeded, func(msg string) error {
		if strings.Contains(msg, "failed") {
			return fmt.Errorf("message %q", msg)
		}
		return nil
	})
	eventually(t, "the migration Job is the managed database's again", func() error {
		for _, j := range migrationJobs(t, ns, "wd") {
			if db := j.Annotations[databaseAnnotation]; db != "managed" {
				return fmt.Errorf("Job %s migrated %s", j.Name, db)
			}
		}
		return nil
	})
	fresh := waitFor(t, &appsv1.StatefulSet{}, ns, "wd-postgres")
	if fresh.UID != sts.UID || fresh.DeletionTimestamp != nil {
		t.Errorf("StatefulSet wd-postgres replaced or deleted (UID %s, was %s)", fresh.UID, sts.UID)
	}
}

// TestRolloutPending: when the runtime's Deployment counts as moved off the configuration
// from before (every pod on its current template, available, none of an older one left).
func TestRolloutPending(t *testing.T) {
	dep := func(gen, observed, replicas, updated, available int32, terminating *int32) *appsv1.Deployment {
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "s-api", Generation: int64(gen)}}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: int64(observed), Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: available, AvailableReplicas: available, TerminatingReplicas: terminating}
		return d
	}
	for _, tc := range []struct {
		name    string
		d       *appsv1.Deployment
		desired int32
		want    string // "" done, else a part of the reason
	}{
		{"done", dep(3, 3, 2, 2, 2, ptr.To[int32](0)), 2, ""},
		{"done, no terminating count (feature off)", dep(3, 3, 2, 2, 2, nil), 2, ""},
		{"template not seen", dep(4, 3, 2, 2, 2, nil), 2, "not seen its new pod template"},
		{"surge pod started", dep(3, 3, 3, 1, 2, nil), 2, "1 of 2 pods run its current pod template, 2 an older one"},
		{"all updated, an old one left", dep(3, 3, 3, 2, 3, nil), 2, "2 of 2 pods run its current pod template, 1 an older one"},
		{"updated, not available", dep(3, 3, 2, 2, 1, nil), 2, "1 of 2 pods of its current pod template are available"},
		{"old pod terminating", dep(3, 3, 2, 2, 2, ptr.To[int32](1)), 2, "pods of an older pod template are still terminating: 1"},
		{"autoscaled up meanwhile", dep(3, 3, 4, 4, 3, nil), 4, "3 of 4 pods"},
		{"scaled to zero, old pods gone", dep(3, 3, 0, 0, 0, nil), 0, ""},
		{"scaled to zero, an old pod left", dep(3, 3, 1, 0, 1, nil), 0, "0 of 0 pods run its current pod template, 1 an older one"},
	} {
		got := rolloutPending(tc.d, tc.desired)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// testKeptWhilePodsRefused: a serving stack in a namespace whose quota is used up moves off
// its managed Redis. The rollout's first new pod is refused, so the old pods stay, and the
// managed Redis is kept for them; CacheReady says why the rollout does not go on (the API
// server's answer), since the Redis it keeps may hold the very quota the new pod lacks.
// "has not finished rolling out" alone read as a wait that ends by itself.
func testKeptWhilePodsRefused(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "kq"))
	makeReady(t, ns, "kq")
	noPodsQuota(t, ns)

	gen := runtimeGeneration(t, ns, "kq")
	updateStack(t, ns, "kq", func(s *tradingv1alpha1.TradingStack) { s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled })
	waitRuntimeTemplate(t, ns, "kq", gen)
	api := waitFor(t, &appsv1.Deployment{}, ns, "kq-api")
	refusal := refusedPod(t, api)
	setRolloutRefused(t, ns, "kq-api", refusal, false)
	waitMessage(t, ns, "kq", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment kq-api has not finished rolling out", "exceeded quota"))
	stillThere(t, "the new pods refused, the old ones serving", managedRedis(ns, "kq")...)
}

// testKeptSaidWhenAStepFails: a serving stack moved off its managed Redis and onto an external
// database keeps both while its runtime may still use them, and says so in CacheReady and
// DatabaseReady. A later spec the API server refuses for the runtime (requests above limits)
// fails the runtime's step; the cache and database steps before it still run and write their
// messages, which kept saying so only when the step of the removals ran: it was skipped, and
// the kept backends went unsaid until the spec was fixed. Nothing is removed either, even once
// the Deployment looks rolled out: the pass did not apply the runtime the spec asks for.
func testKeptSaidWhenAStepFails(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "kf"))
	makeReady(t, ns, "kf")
	gen := runtimeGeneration(t, ns, "kf")
	updateStack(t, ns, "kf", func(s *tradingv1alpha1.TradingStack) { s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled })
	waitRuntimeTemplate(t, ns, "kf", gen)
	moveToExternalDatabase(t, ns, "kf", "corp-db", "postgres://app:pw@db.corp:5432/trading")
	waitMessage(t, ns, "kf", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment kf-redis"))
	waitMessage(t, ns, "kf", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet kf-postgres"))

	updateStack(t, ns, "kf", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Resources = requestsAboveLimits() })
	s := waitCondition(t, ns, "kf", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	for _, cond := range []struct{ typ, reason, workload string }{
		{tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ReasonCacheDisabled, "Deployment kf-redis"},
		{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ReasonExternalDatabase, "StatefulSet kf-postgres"},
	} {
		c := condition(s, cond.typ)
		if c.Reason != cond.reason || c.ObservedGeneration != s.Generation {
			t.Errorf("%s %s for generation %d (stack at %d): the step before the failed one ran", cond.typ, c.Reason, c.ObservedGeneration, s.Generation)
		}
		if err := saysKept(cond.workload)(c.Message); err != nil {
			t.Errorf("%s after the runtime's step failed: %v", cond.typ, err)
		}
		t.Logf("%s: %s", cond.typ, c.Message)
	}

	markDeploymentReady(t, ns, "kf-api")
	if _, _, err := reconcileStale(t, ns, "kf"); err == nil {
		t.Errorf("a pass with the runtime's spec refused succeeded")
	}
	stillThere(t, "the runtime's step failed", append(managedPostgres(ns, "kf"), managedRedis(ns, "kf")...)...)
	waitMessage(t, ns, "kf", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment kf-redis"))
}
