package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/runtime/postgres"
)

// Waiting on a migration Job, on a database StatefulSet without a pod, or on a pod of the
// runtime, the database or Redis that is not ready are the places the operator polls: the
// Job's own status changes wake it too, the timer is a backstop that grows with the object's
// age so a slow migration is not polled hot; a pod the API server refuses is said only in
// events, which nothing watches (createRefused), and why a pod waits only in the pod
// (podsWaiting).
const (
	pollMin = 5 * time.Second
	pollMax = 2 * time.Minute
)

// reconcileMigrations runs `tradingd migrate` for the desired runtime image in
// a Job named after the image, and decides which image the runtime may run:
// the desired one once its Job succeeded, otherwise the last one that did.
func (r *TradingStackReconciler) reconcileMigrations(ctx context.Context, p *pass) (bool, error) {
	image := p.spec.RuntimeImage()
	database := migrationDatabase(p)
	previous := p.stack.Status.Migration.Image
	p.servingImage = previous
	sameDatabase := p.stack.Status.Migration.Database == database
	if p.stack.Status.Migration.Database == "" {
		// Written by an operator that did not record the database: judge by the Secret its
		// Job read the DSN from, if the Job is still there.
		same, err := r.legacyJobSameDatabase(ctx, p)
		if err != nil {
			return false, err
		}
		sameDatabase = same
	}

	if previous == image && sameDatabase {
		p.stack.Status.Migration.Database = database
		// Already migrated: keep the Job as the record. A Job deleted by hand is put back
		// like any child; it runs `tradingd migrate` again, which finds nothing to apply,
		// and the runtime does not wait for it.
		job := desiredMigrationJob(p.spec, image, database)
		current := &batchv1.Job{}
		found, err := r.getCached(ctx, client.ObjectKeyFromObject(job), current)
		if err != nil {
			return false, err
		}
		if migrated := current.Annotations[databaseAnnotation]; found && migrated != "" && migrated != database {
			// This image's Job ran on another database, which the spec named for a while (a
			// move taken back before that migration succeeded): it is no record of this
			// database's migration, and its failure is not this database's. Once it is not
			// running it is deleted, and its deletion brings the pass that puts this database's
			// back.
			if _, state := jobOutcome(current); state != jobRunning {
				if _, err := r.deleteOnce(ctx, current); err != nil {
					return false, err
				}
			}
			found = false
		} else if !found {
			if err := r.applyChild(ctx, p, job); err != nil {
				return false, err
			}
		}
		msg := fmt.Sprintf("migration Job %s succeeded for image %s", p.stack.Status.Migration.JobName, image)
		if _, state := jobOutcome(current); found && state == jobFailed {
			// The schema is this image's (an earlier run succeeded), so the runtime is not held
			// back; but the Job as it stands now failed, and saying "succeeded" would hide it.
			msg = fmt.Sprintf("the schema was migrated for image %s by an earlier run, but Job %s, run again since, failed: see its logs",
				image, current.Name)
		}
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionTrue, tradingv1alpha1.ReasonMigrationSucceeded, msg)
		return false, r.pruneMigrationJobs(ctx, p, p.stack.Status.Migration.JobName)
	}

	p.databaseMoved = previous != "" && !sameDatabase
	if !meta.IsStatusConditionTrue(p.stack.Status.Conditions, tradingv1alpha1.ConditionDatabaseReady) {
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonWaitingForDatabase,
			fmt.Sprintf("the migration for image %s waits for the database", image))
		return false, nil
	}

	job := desiredMigrationJob(p.spec, image, database)
	current := &batchv1.Job{}
	found, err := r.getCached(ctx, client.ObjectKeyFromObject(job), current)
	if err != nil {
		return false, err
	}
	if migrated := current.Annotations[databaseAnnotation]; found && migrated != database && (migrated != "" || !sameDatabase) {
		// This image's Job migrated another database (the stack was pointed elsewhere):
		// run it again, under the same name, once it is not running.
		if _, state := jobOutcome(current); state == jobRunning {
			p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning,
				fmt.Sprintf("migration Job %s still runs for the previous database; it runs again for this one next", current.Name))
			p.requeue(waitPoll(current))
			return false, nil
		}
		deleted, err := r.deleteOnce(ctx, current)
		if err != nil {
			return false, err
		}
		msg := fmt.Sprintf("the database changed: migration Job %s runs again for image %s", current.Name, image)
		if deleted {
			p.requeue(pollMin)
		} else {
			// Held by another tool's finalizer, for as long as that tool takes: nothing runs
			// until it lets go, which only that tool (or the user) can do; the Job's removal
			// brings the next pass. Polled, it was a pass every 5 s for as long.
			msg += fmt.Sprintf(" once it is gone: it is being deleted, held by finalizers %s", strings.Join(current.Finalizers, ", "))
		}
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning, msg)
		return false, nil
	}
	if !found {
		// A Job's template is immutable, so it is only ever created, never
		// re-applied: a later change of the stack does not re-run a migration.
		if err := r.applyChild(ctx, p, job); err != nil {
			return false, err
		}
		current = job
	}

	switch cond, state := jobOutcome(current); state {
	case jobSucceeded:
		p.servingImage = image
		p.databaseMoved = false
		p.stack.Status.Migration = tradingv1alpha1.MigrationStatus{Image: image, JobName: current.Name, Database: database}
		p.stack.Status.SchemaVersion = r.appliedSchemaVersion(ctx, current, image)
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionTrue, tradingv1alpha1.ReasonMigrationSucceeded,
			fmt.Sprintf("migration Job %s succeeded for image %s", current.Name, image))
		return false, r.pruneMigrationJobs(ctx, p, current.Name)

	case jobFailed:
		// One stable reason (tools match on it); the Job's own (BackoffLimitExceeded,
		// DeadlineExceeded) goes into the message.
		reason, msg := tradingv1alpha1.ReasonMigrationFailed, fmt.Sprintf("migration Job %s failed", current.Name)
		if cond != nil {
			msg = fmt.Sprintf("migration Job %s failed: %s: %s", current.Name, cond.Reason, cond.Message)
		}
		msg += r.lastAttemptFailed(ctx, current)
		switch {
		case p.databaseMoved:
			msg += fmt.Sprintf("; the runtime keeps serving image %s from the database it used before", previous)
		case previous != "":
			msg += fmt.Sprintf("; the runtime keeps serving image %s", previous)
		}
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, reason, msg)
		return false, nil

	default:
		msg := fmt.Sprintf("migration Job %s for image %s is running", current.Name, image)
		// Read uncached, once per poll of a running Job, like the schema report. Unreadable,
		// the condition says "running", as before; the next poll reads again.
		if pods, err := r.selectedPods(ctx, current.Namespace, current.Spec.Selector); err == nil {
			if why := migrationPodWaiting(pods); why != "" {
				msg += "; its pod waits: " + why
			} else {
				msg += r.createRefused(ctx, current, pods)
			}
		}
		p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionUnknown, tradingv1alpha1.ReasonMigrationRunning, msg)
		p.requeue(waitPoll(current))
		return false, nil
	}
}

// migrationPodWaiting says why a running migration Job's pod (of pods, the Job's) does not
// run, when it cannot (an image that cannot be pulled, a Secret or key its environment names
// that is missing, no node for it), or "". Such a pod is no failure to the Job controller: the
// Job only fails at its deadline, ten minutes later, and until then "running" would be all the
// stack said about a mistyped image tag.
func migrationPodWaiting(pods []corev1.Pod) string {
	// The newest pod tells: an earlier attempt's state is history.
	sortNewestFirst(pods)
	for _, pod := range pods {
		if podDone(&pod) {
			continue
		}
		return podWaiting(&pod, migrateContainer)
	}
	return ""
}

// podDone: pod has ended or is going; it no longer waits, nor stands for one that could not
// be created.
func podDone(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// lastAttemptFailed says, after "; ", how the newest failed attempt of job (failed) ended:
// its migrate container's exit code and the last line of its termination message (tradingd's
// error line, or with FallbackToLogsOnError the last of its logs), which the Job's own
// BackoffLimitExceeded does not tell. "" when no pod tells (gone, or unreadable): the
// condition says what the Job says. Read uncached, only for a failed Job, whose pods no longer
// change: every pass says the same, and one at rest writes nothing.
func (r *TradingStackReconciler) lastAttemptFailed(ctx context.Context, job *batchv1.Job) string {
	pods, err := r.selectedPods(ctx, job.Namespace, job.Spec.Selector)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "cannot read the failed migration Job's pods to say why it failed", "job", job.Name)
		return ""
	}
	sortNewestFirst(pods)
	for _, pod := range pods {
		for _, c := range pod.Status.ContainerStatuses {
			if t := c.State.Terminated; c.Name == migrateContainer && t != nil && t.ExitCode != 0 {
				return "; " + clip(containerExited(c.Name, t, lastLine(t.Message)), maxFailureLine)
			}
		}
	}
	return ""
}

// maxFailureLine bounds what a failed migration's condition quotes of its container: room
// for a database error with its context, short of a log's tail.
const maxFailureLine = 1024

// lastLine is the last line of text that is not blank: a failed command's last word.
func lastLine(text string) string {
	text = strings.TrimRight(text, " \t\r\n")
	return text[strings.LastIndexByte(text, '\n')+1:]
}

// shortReason is "reason: message" on one line of at most 300 bytes (a registry's error can
// run to many lines).
func shortReason(reason, message string) string {
	return strings.TrimSuffix(clip(reason+": "+message, 300), ":")
}

// clip is s on one line of at most limit bytes, cut in whole characters and marked.
func clip(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit-3], "") + "..."
	}
	return s
}

// legacyJobSameDatabase reports whether the migration Job recorded in the status read its
// DSN from the Secret and key the stack uses now (true when the Job is gone: nothing says
// otherwise).
func (r *TradingStackReconciler) legacyJobSameDatabase(ctx context.Context, p *pass) (bool, error) {
	name := p.stack.Status.Migration.JobName
	if name == "" {
		return true, nil
	}
	job := &batchv1.Job{}
	found, err := r.getCached(ctx, client.ObjectKey{Namespace: p.stack.Namespace, Name: name}, job)
	if err != nil || !found {
		return true, err
	}
	want := databaseURLEnv(p.spec).ValueFrom.SecretKeyRef
	for _, c := range job.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "DATABASE_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				got := e.ValueFrom.SecretKeyRef
				return got.Name == want.Name && got.Key == want.Key, nil
			}
		}
	}
	return true, nil
}

// migrationDatabase identifies the database the runtime uses (MigrationStatus.Database):
// the managed one, or the external DSN's Secret and key with a hash of the server and
// database it names, so that a DSN edited to point elsewhere counts as another database. The
// password is not part of it: a rotated password is the same database, and the identity is
// readable by whoever may read Jobs, who must not get a hash to guess passwords against.
func migrationDatabase(p *pass) string {
	if !p.spec.ExternalPostgres() {
		return "managed"
	}
	ref := p.spec.Spec.Postgres.External.ConnectionSecretRef
	id := "external:" + ref.Name + "/" + ref.Key
	for _, sec := range p.runtimeSecrets {
		if sec.Name != ref.Name || len(sec.Data[ref.Key]) == 0 {
			continue // another key of the Secret (a CA bundle kept with the DSN)
		}
		cfg, err := pgconn.ParseConfig(string(sec.Data[ref.Key]))
		if err != nil {
			return id // tradingd will say what is wrong with the DSN
		}
		sum := sha256.Sum256(fmt.Appendf(nil, "%s:%d/%s", cfg.Host, cfg.Port, cfg.Database))
		return id + ":" + hex.EncodeToString(sum[:6])
	}
	return id
}

type jobState int

const (
	jobRunning jobState = iota
	jobSucceeded
	jobFailed
)

// jobOutcome reads a Job's terminal condition, as the Job controller sets it.
func jobOutcome(j *batchv1.Job) (*batchv1.JobCondition, jobState) {
	for i := range j.Status.Conditions {
		c := &j.Status.Conditions[i]
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete:
			return c, jobSucceeded
		case batchv1.JobFailed:
			return c, jobFailed
		}
	}
	return nil, jobRunning
}

// waitPoll is half obj's age, within bounds: a quick migration is noticed quickly, a long one
// (or a refusal that lasts) is not polled often.
func waitPoll(obj client.Object) time.Duration {
	d := time.Since(obj.GetCreationTimestamp().Time) / 2
	return min(max(d, pollMin), pollMax)
}

// pruneMigrationJobs deletes the stack's migration Jobs other than keep: they
// belong to images the runtime no longer runs.
func (r *TradingStackReconciler) pruneMigrationJobs(ctx context.Context, p *pass, keep string) error {
	jobs := &batchv1.JobList{}
	if err := r.List(ctx, jobs, client.InNamespace(p.stack.Namespace),
		client.MatchingLabels{instanceLabel: p.stack.Name, componentLabel: migrationComponent}); err != nil {
		return err
	}
	for i := range jobs.Items {
		j := &jobs.Items[i]
		if j.Name == keep || !isControlledBy(j, p.stack) {
			continue
		}
		if _, state := jobOutcome(j); state == jobRunning {
			continue // an image change raced with it; let it finish
		}
		if _, err := r.deleteOnce(ctx, j); err != nil {
			return err
		}
	}
	return nil
}

// appliedSchemaVersion is the schema version job (succeeded) left the database at. The
// default image's is compiled into this build; any other image reports it in its migrate
// container's termination message, read from the Job's pods once, when the Job is seen
// succeeded. An image from before that report, pods already gone, or pods that cannot be
// read fall back to the image's tag (schemaVersionOf): the column informs, and must never hold
// back the runtime the migration cleared (an operator upgraded before its ClusterRole, say).
func (r *TradingStackReconciler) appliedSchemaVersion(ctx context.Context, job *batchv1.Job, image string) string {
	if image == tradingv1alpha1.DefaultRuntimeImage {
		return schemaVersionOf(image)
	}
	pods, err := r.selectedPods(ctx, job.Namespace, job.Spec.Selector)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "cannot read the migration Job's pods for the schema version; showing the image's tag", "job", job.Name)
		return schemaVersionOf(image)
	}
	for _, pod := range pods {
		for _, c := range pod.Status.ContainerStatuses {
			if t := c.State.Terminated; c.Name == migrateContainer && t != nil && t.ExitCode == 0 {
				if v, ok := postgres.ParseSchemaReport(t.Message); ok {
					return v
				}
			}
		}
	}
	return schemaVersionOf(image)
}

// selectedPods lists the pods of a Job, StatefulSet or Deployment: those its selector matches
// in namespace (none for a nil selector). Uncached: the operator keeps no informer on pods for
// the few reads of a migration (its schema report, why it waits) or of a workload that waits.
func (r *TradingStackReconciler) selectedPods(ctx context.Context, namespace string, sel *metav1.LabelSelector) ([]corev1.Pod, error) {
	if sel == nil {
		return nil, nil
	}
	selector, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, err
	}
	pods := &corev1.PodList{}
	if err := r.APIReader.List(ctx, pods, client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// schemaVersionOf names the schema an image's `tradingd migrate` applies. The
// migrations are embedded in the binary: for the runtime image built with this
// operator (the default) that is exactly this build's postgres.SchemaVersion;
// for any other image the operator cannot look inside, and its tag (or digest)
// names the schema instead.
func schemaVersionOf(image string) string {
	if image == tradingv1alpha1.DefaultRuntimeImage {
		return strconv.FormatInt(postgres.SchemaVersion, 10)
	}
	if i := strings.LastIndex(image, "@"); i >= 0 {
		d := image[i+1:]
		if j := strings.IndexByte(d, ':'); j >= 0 && len(d) > j+13 {
			return d[:j+13]
		}
		return d
	}
	if i := strings.LastIndex(image, ":"); i >= 0 && !strings.Contains(image[i:], "/") {
		return image[i+1:]
	}
	return "latest"
}
