package controllers

import (
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: available, AvailableReplicas: available, UnavailableReplicas: replicas - available,
			TerminatingReplicas: ptr.To(terminating),
			Conditions:          deploymentConditions(true, "ReplicaSetUpdated"),
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
	job := waitExternalMigrationJob(t, ns, "ra", "corp-db")
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "external database not migrated, the runtime not moved", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet ra-postgres", "migration"))

	// Migrated: the runtime moves onto the external database, and until every pod runs there
	// the managed one is kept for the pods from before.
	finishJob(t, ns, job.Name, true)
	waitRuntimeTemplate(t, ns, "ra", gen)
	reconcileDirectly(t, ns, "ra", 2)
	stillThere(t, "migrated, the runtime not rolled out", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysKept("Deployment ra-api has not finished rolling out"))

	markDeploymentReady(t, ns, "ra-api")
	waitGone(t, "managed PostgreSQL removed once migrated and rolled out", managedPostgres(ns, "ra")...)
	waitMessage(t, ns, "ra", tradingv1alpha1.ConditionDatabaseReady, saysNotKept)
	waitCondition(t, ns, "ra", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// testWrongDSNKeepsManaged: a serving stack moved to an external database whose DSN is wrong
// (a typo in the host): the migration Job fails, and the runtime never moves onto that DSN
// (it rolled out at once: its new pods never became ready, and the rollout ended stuck). The
// managed database stays, the pods keep serving from it, and the stack says so (Degraded,
// DatabaseReady saying why the managed database is kept), writing nothing at rest. Moved back
// before the removal, the stack just keeps using the managed database, without a rollout,
// and the failed Job of the external one no longer reads as its migration record.
func testWrongDSNKeepsManaged(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "wd"))
	makeReady(t, ns, "wd")
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, "wd-postgres")

	gen := runtimeGeneration(t, ns, "wd")
	moveToExternalDatabase(t, ns, "wd", "corp-db", "postgres://app:pw@db.typo.corp:5432/trading")
	job := waitExternalMigrationJob(t, ns, "wd", "corp-db")
	reconcileDirectly(t, ns, "wd", 2)
	wantRuntimeDatabase(t, "the external database's migration running", ns, "wd", "wd-postgres-credentials/dsn")
	finishJob(t, ns, job.Name, false)
	waitCondition(t, ns, "wd", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, tradingv1alpha1.ReasonMigrationFailed)
	reconcileDirectly(t, ns, "wd", 2)
	stillThere(t, "the external database's migration failed", managedPostgres(ns, "wd")...)
	// The runtime never moved onto the DSN that cannot work: no pod of it, no stalled rollout.
	wantRuntimeDatabase(t, "the external database's migration failed", ns, "wd", "wd-postgres-credentials/dsn")
	if g := runtimeGeneration(t, ns, "wd"); g != gen {
		t.Errorf("Deployment wd-api changed (generation %d -> %d) for a database whose migration failed", gen, g)
	}

	s := waitMessage(t, ns, "wd", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet wd-postgres", "migration", "failed"))
	if c := condition(s, tradingv1alpha1.ConditionDegraded); s.Status.Phase != tradingv1alpha1.PhaseDegraded || c == nil ||
		c.Status != metav1.ConditionTrue || c.Reason != tradingv1alpha1.ReasonOldRuntimeServing || !strings.Contains(c.Message, "database it used before") {
		t.Errorf("phase %s, Degraded %+v; want Degraded OldRuntimeServing saying the runtime serves from the database it used before", s.Status.Phase, c)
	}
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c == nil || c.Status != metav1.ConditionTrue ||
		c.Reason != tradingv1alpha1.ReasonDeploymentAvailable || saysHeld(c.Message) != nil {
		t.Errorf("RuntimeAvailable %+v; the pods from before serve, held on the managed database", c)
	}
	for _, c := range []string{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ConditionDegraded} {
		t.Logf("%s: %s", c, condition(s, c).Message)
	}
	assertQuietNoRequeue(t, ns, "wd")

	updateStack(t, ns, "wd", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.External = nil })
	s = waitCondition(t, ns, "wd", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	if g := runtimeGeneration(t, ns, "wd"); g != gen {
		t.Errorf("Deployment wd-api changed (generation %d -> %d) by a move back to the database it serves from", gen, g)
	}
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
//
// The runtime's pod template is held while the external database's migration has not
// succeeded, and the resources wait with it: the refusal (and the failed step) comes only
// once that migration succeeded, so the test lets it succeed to reach its point. That is the
// sharper case besides: the database is migrated and the Deployment looks rolled out, but the
// template applied last is still the held one, every pod on the managed database and Redis.
func testKeptSaidWhenAStepFails(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "kf"))
	makeReady(t, ns, "kf")
	gen := runtimeGeneration(t, ns, "kf")
	updateStack(t, ns, "kf", func(s *tradingv1alpha1.TradingStack) { s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled })
	waitRuntimeTemplate(t, ns, "kf", gen)
	moveToExternalDatabase(t, ns, "kf", "corp-db", "postgres://app:pw@db.corp:5432/trading")
	job := waitExternalMigrationJob(t, ns, "kf", "corp-db")
	waitMessage(t, ns, "kf", tradingv1alpha1.ConditionCacheReady, saysKept("Deployment kf-redis"))
	waitMessage(t, ns, "kf", tradingv1alpha1.ConditionDatabaseReady, saysKept("StatefulSet kf-postgres"))

	gen = runtimeGeneration(t, ns, "kf")
	updateStack(t, ns, "kf", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Resources = requestsAboveLimits() })
	reconcileDirectly(t, ns, "kf", 2) // held: the refused resources are not applied yet
	if g := runtimeGeneration(t, ns, "kf"); g != gen {
		t.Errorf("Deployment kf-api changed (generation %d -> %d) before the external database was migrated", gen, g)
	}
	finishJob(t, ns, job.Name, true)
	s := waitCondition(t, ns, "kf", tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed)
	if c := condition(s, tradingv1alpha1.ConditionMigrationsSucceeded); c.Status != metav1.ConditionTrue {
		t.Errorf("MigrationsSucceeded %s: %s; want the external database migrated", c.Status, c.Message)
	}
	wantRuntimeDatabase(t, "the template for the external database refused", ns, "kf", "kf-postgres-credentials/dsn")
	// The pods from before serve on, but for the refusal (Ready says it), not for a migration:
	// that one succeeded.
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c.Status != metav1.ConditionTrue || saysNotHeld(c.Message) != nil {
		t.Errorf("RuntimeAvailable %s: %s; want True, no longer waiting for the migration", c.Status, c.Message)
	}
	for _, cond := range []struct{ typ, reason, workload string }{
		{tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ReasonCacheDisabled, "Deployment kf-redis"},
		{tradingv1alpha1.ConditionDatabaseReady, tradingv1alpha1.ReasonExternalDatabase, "StatefulSet kf-postgres"},
	} {
		c := condition(s, cond.typ)
		if c.Reason != cond.reason || c.ObservedGeneration != s.Generation {
			t.Errorf("%s %s for generation %d (stack at %d): the step before the failed one ran", cond.typ, c.Reason, c.ObservedGeneration, s.Generation)
		}
		if err := saysKept(cond.workload, "the runtime step failed")(c.Message); err != nil {
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

// heldText is what RuntimeAvailable says while the runtime is held on the database it used
// before a move.
const heldText = "keeps serving from the database it used before until the migration on the new one succeeds"

func saysHeld(msg string) error {
	if !strings.Contains(msg, heldText) {
		return fmt.Errorf("message %q does not say %q", msg, heldText)
	}
	return nil
}

func saysNotHeld(msg string) error {
	if strings.Contains(msg, heldText) {
		return fmt.Errorf("message %q still says the runtime is held", msg)
	}
	return nil
}

// runtimeDatabase is the Secret (and key) the runtime Deployment's pods take DATABASE_URL from,
// and the PGSSLROOTCERT they are given ("" without one).
func runtimeDatabase(t *testing.T, ns, stack string) (secret, rootCert string) {
	t.Helper()
	d := waitFor(t, &appsv1.Deployment{}, ns, stack+"-api")
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		switch {
		case e.Name == "DATABASE_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			secret = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		case e.Name == "PGSSLROOTCERT":
			rootCert = e.Value
		}
	}
	return secret, rootCert
}

// wantRuntimeDatabase fails the test unless the runtime's pods take DATABASE_URL from secret.
func wantRuntimeDatabase(t *testing.T, what, ns, stack, secret string) {
	t.Helper()
	if got, _ := runtimeDatabase(t, ns, stack); got != secret {
		t.Errorf("%s: the runtime's DATABASE_URL comes from %s, want %s", what, got, secret)
	}
}

// waitNewMigrationJob waits for a migration Job of the stack other than the one with UID old
// (the same image's Job, run again for another database) and returns it.
func waitNewMigrationJob(t *testing.T, ns, stack string, old types.UID) *batchv1.Job {
	t.Helper()
	var job *batchv1.Job
	eventually(t, "the migration Job run again for the new database", func() error {
		for _, j := range migrationJobs(t, ns, stack) {
			if j.UID != old && j.DeletionTimestamp == nil {
				job = &j
				return nil
			}
		}
		return fmt.Errorf("no new migration Job yet")
	})
	return job
}

// testMoveHoldsRuntime: a serving stack pointed at an external database keeps its runtime on
// the managed database until the external one's migration succeeded. It was re-applied at
// once with the new DATABASE_URL: its new pods met an empty schema and crash-looped until the
// Job succeeded. Meanwhile a new replica count passes (pods added start from the template
// that serves); once the Job succeeded the new template rolls out, and the managed database
// goes only after that rollout.
func testMoveHoldsRuntime(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "hr"))
	makeReady(t, ns, "hr")
	before := waitFor(t, &appsv1.Deployment{}, ns, "hr-api")

	moveToExternalDatabase(t, ns, "hr", "corp-db", "postgres://app:pw@db.corp:5432/trading")
	job := waitExternalMigrationJob(t, ns, "hr", "corp-db")
	reconcileDirectly(t, ns, "hr", 2)
	wantRuntimeDatabase(t, "the external database's migration running", ns, "hr", "hr-postgres-credentials/dsn")
	waitMessage(t, ns, "hr", tradingv1alpha1.ConditionRuntimeAvailable, saysHeld)
	updateStack(t, ns, "hr", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 3 })
	eventually(t, "the new replica count applied during the move", func() error {
		if d := waitFor(t, &appsv1.Deployment{}, ns, "hr-api"); ptr.Deref(d.Spec.Replicas, 0) != 3 {
			return fmt.Errorf("replicas %v", d.Spec.Replicas)
		}
		return nil
	})
	markDeploymentReady(t, ns, "hr-api") // three pods of the held template
	reconcileDirectly(t, ns, "hr", 2)
	held := waitFor(t, &appsv1.Deployment{}, ns, "hr-api")
	wantRuntimeDatabase(t, "the external database not migrated yet", ns, "hr", "hr-postgres-credentials/dsn")
	if !equality.Semantic.DeepEqual(before.Spec.Template, held.Spec.Template) {
		t.Errorf("the runtime's pod template changed before the external database was migrated:\n%+v\n%+v", before.Spec.Template, held.Spec.Template)
	}
	s := waitMessage(t, ns, "hr", tradingv1alpha1.ConditionRuntimeAvailable, saysHeld)
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); c.Status != metav1.ConditionTrue || c.Reason != tradingv1alpha1.ReasonDeploymentAvailable {
		t.Errorf("RuntimeAvailable %s/%s while held, want True/DeploymentAvailable", c.Status, c.Reason)
	}

	finishJob(t, ns, job.Name, true)
	waitRuntimeTemplate(t, ns, "hr", held.Generation)
	wantRuntimeDatabase(t, "the external database migrated", ns, "hr", "corp-db/dsn")
	waitMessage(t, ns, "hr", tradingv1alpha1.ConditionRuntimeAvailable, saysNotHeld)
	reconcileDirectly(t, ns, "hr", 2)
	stillThere(t, "migrated, the runtime not rolled out onto it yet", managedPostgres(ns, "hr")...)
	markDeploymentReady(t, ns, "hr-api")
	waitGone(t, "managed PostgreSQL removed once the runtime rolled out onto the external one", managedPostgres(ns, "hr")...)
	waitCondition(t, ns, "hr", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}

// testExternalMovesHoldRuntime: a stack on an external database with a CA bundle. Its DSN
// edited in place to another server keeps the runtime's pods as they are (the Secret's name
// is the same: only the config hash would roll them onto the new server) until that server's
// migration succeeded. Then moved to a managed database, the runtime keeps the external DSN
// and its CA while the managed one starts and migrates.
func testExternalMovesHoldRuntime(t *testing.T) {
	ns := newNamespace(t)
	for name, data := range map[string]map[string]string{
		"corp-db":    {"dsn": "postgres://app:pw@db1.corp:5432/trading?sslmode=verify-full"},
		"corp-db-ca": {"ca.pem": testCAPEM(t)},
	} {
		if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}); err != nil {
			t.Fatal(err)
		}
	}
	createStack(t, newStack(ns, "hx", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{
			ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"},
			CASecretRef:         &tradingv1alpha1.SecretKeyReference{Name: "corp-db-ca", Key: "ca.pem"}}
	}))
	makeReady(t, ns, "hx")
	before := waitFor(t, &appsv1.Deployment{}, ns, "hx-api")
	first := waitExternalMigrationJob(t, ns, "hx", "corp-db")

	sec := waitFor(t, &corev1.Secret{}, ns, "corp-db")
	sec.Data["dsn"] = []byte("postgres://app:pw@db2.corp:5432/trading?sslmode=verify-full")
	if err := k8s.Update(bg, sec); err != nil {
		t.Fatal(err)
	}
	job := waitNewMigrationJob(t, ns, "hx", first.UID)
	reconcileDirectly(t, ns, "hx", 2)
	if held := waitFor(t, &appsv1.Deployment{}, ns, "hx-api"); !equality.Semantic.DeepEqual(before.Spec.Template, held.Spec.Template) {
		t.Errorf("the runtime's pod template changed before the new server was migrated: config hash %s -> %s",
			before.Spec.Template.Annotations[configHashAnnotation], held.Spec.Template.Annotations[configHashAnnotation])
	}
	waitMessage(t, ns, "hx", tradingv1alpha1.ConditionRuntimeAvailable, saysHeld)
	finishJob(t, ns, job.Name, true)
	waitRuntimeTemplate(t, ns, "hx", before.Generation)
	markDeploymentReady(t, ns, "hx-api")
	waitCondition(t, ns, "hx", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")

	migrated := waitFor(t, &appsv1.Deployment{}, ns, "hx-api")
	updateStack(t, ns, "hx", func(s *tradingv1alpha1.TradingStack) { s.Spec.Postgres.External = nil })
	waitFor(t, &appsv1.StatefulSet{}, ns, "hx-postgres")
	waitCondition(t, ns, "hx", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonWaitingForDatabase)
	reconcileDirectly(t, ns, "hx", 2)
	if secret, root := runtimeDatabase(t, ns, "hx"); secret != "corp-db/dsn" || root == "" {
		t.Errorf("the managed database not migrated yet: DATABASE_URL from %s, PGSSLROOTCERT %q; want corp-db/dsn and the CA", secret, root)
	}
	if held := waitFor(t, &appsv1.Deployment{}, ns, "hx-api"); held.Generation != migrated.Generation {
		t.Errorf("Deployment hx-api changed (generation %d -> %d) before the managed database was migrated", migrated.Generation, held.Generation)
	}
	waitMessage(t, ns, "hx", tradingv1alpha1.ConditionRuntimeAvailable, saysHeld)

	// Deleted by hand meanwhile, it has no template to keep: it is made once the managed
	// database is migrated, not now on a database without the schema.
	if err := k8s.Delete(bg, objectNamed(&appsv1.Deployment{}, ns, "hx-api")); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "hx", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonWaitingForMigration)
	reconcileDirectly(t, ns, "hx", 2)
	if err := k8s.Get(bg, key(ns, "hx-api"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("Deployment hx-api made again before the managed database was migrated (%v)", err)
	}

	markStatefulSetReady(t, ns, "hx-postgres")
	finishJob(t, ns, waitNewMigrationJob(t, ns, "hx", job.UID).Name, true)
	waitFor(t, &appsv1.Deployment{}, ns, "hx-api")
	if secret, root := runtimeDatabase(t, ns, "hx"); secret != "hx-postgres-credentials/dsn" || root != "" {
		t.Errorf("the managed database migrated: DATABASE_URL from %s, PGSSLROOTCERT %q; want hx-postgres-credentials/dsn and no CA", secret, root)
	}
	markDeploymentReady(t, ns, "hx-api")
	waitCondition(t, ns, "hx", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
}
