package controllers

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// reconcileDatabase runs the managed PostgreSQL (StatefulSet and Service) or
// checks the external database's Secret.
func (r *TradingStackReconciler) reconcileDatabase(ctx context.Context, p *pass) (bool, error) {
	if p.spec.ExternalPostgres() {
		// Only the user's Secrets here: the managed database the stack left is removed by
		// retireManagedBackends, once every backend's Secrets were found.
		return r.reconcileExternalDatabase(ctx, p)
	}

	var credentials *corev1.Secret
	for _, sec := range p.runtimeSecrets {
		if sec.Name == postgresCredentialsSecretName(p.stack) {
			credentials = sec
		}
	}
	sts := desiredPostgresStatefulSet(p.spec, configHash(nil, credentials))
	// The volume claim templates of a StatefulSet cannot change in place; once
	// it exists, keep the ones it was created with so a grown storage size does
	// not turn every apply into a rejected update.
	current := &appsv1.StatefulSet{}
	found, err := r.getCached(ctx, client.ObjectKeyFromObject(sts), current)
	if err != nil {
		return false, err
	}
	notApplied := ""
	if found && len(current.Spec.VolumeClaimTemplates) > 0 {
		if err := r.growVolumes(ctx, p, sts, current); err != nil {
			return false, err
		}
		notApplied = storageNotApplied(sts.Spec.VolumeClaimTemplates, current.Spec.VolumeClaimTemplates, func(tmpl string) string {
			// A template without a class made a claim of the cluster's default class; which
			// one that is, only the claim says (read only when the spec names a class).
			pvc := &corev1.PersistentVolumeClaim{}
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: current.Namespace, Name: fmt.Sprintf("%s-%s-0", tmpl, current.Name)}, pvc); err != nil {
				return ""
			}
			return ptr.Deref(pvc.Spec.StorageClassName, "")
		})
		sts.Spec.VolumeClaimTemplates = keepClaimTemplates(current.Spec.VolumeClaimTemplates)
	}
	if err := r.applyChild(ctx, p, sts); err != nil {
		return false, err
	}
	if err := r.applyChild(ctx, p, desiredPostgresService(p.spec)); err != nil {
		return false, err
	}

	if sts.Status.ReadyReplicas >= 1 {
		p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable,
			fmt.Sprintf("StatefulSet %s has a ready PostgreSQL pod%s%s", sts.Name, notApplied, poolsWarning(p.spec)))
	} else {
		refused, waiting := "", ""
		pods, err := r.selectedPods(ctx, sts.Namespace, sts.Spec.Selector)
		if err == nil {
			refused = r.createRefused(ctx, sts, pods)
			// Why the pod waits (its volume claim unbound, an image that cannot be pulled, a
			// crash loop); polled while it is not ready.
			waiting = podsWaiting(p, pods, postgresContainer)
		}
		if err != nil || !slices.ContainsFunc(pods, func(pod corev1.Pod) bool { return !podDone(&pod) }) {
			// No pod whose readiness would bring the next pass: the StatefulSet controller
			// says a refusal only in an event, maybe after this pass read them.
			p.requeue(waitPoll(sts))
		}
		p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady,
			fmt.Sprintf("waiting for StatefulSet %s to have a ready pod%s%s%s", sts.Name, notApplied, refused, waiting))
	}
	return false, nil
}

// retireManagedBackends removes the managed Redis of a stack that no longer uses it, and the
// managed database of one moved to an external database (its volume kept), once no runtime
// pod can still use them: the runtime's pods read their configuration at start, so those from
// before the move keep talking to the managed backends until the Deployment has rolled out
// completely onto a template without them (runtimeRollout), and the database is needed until
// the external one's migration succeeded besides (a failed migration keeps the old runtime
// serving from it, and a move back finds it). Until then DatabaseReady or CacheReady says why
// it is kept. A step after the runtime's, so that it judges the template this pass applied;
// when a step before it failed or waits (a user's Secret missing, a typo, a Secret applied
// after the stack), the runtime's step did not run: the backends stay (MoveWaitsForUserSecret,
// MoveBothWaitsForRedisSecret), still said to be kept (KeptSaidWhenAStepFails: the cache and
// database steps, which ran, wrote their messages afresh). Removed as soon as the Secrets were
// found, the old pods lost their database or Redis in the middle of the rollout, and a wrong
// DSN left nothing serving (MoveRetiresAfterRollout, WrongDSNKeepsManaged).
func (r *TradingStackReconciler) retireManagedBackends(ctx context.Context, p *pass) (bool, error) {
	if p.cutShort != "" {
		// Whether a pod still uses a backend was not judged (p.runtime is nil): none is removed,
		// and each that still runs is said to be kept, as in the pass before.
		why := p.cutShort + ", so this pass did not judge the runtime's rollout"
		if p.spec.Spec.Redis.Mode != tradingv1alpha1.RedisManaged {
			if err := r.keepManaged(ctx, p, tradingv1alpha1.ConditionCacheReady, &appsv1.Deployment{}, redisName(p.stack), "Redis", why); err != nil {
				return false, err
			}
		}
		if p.spec.ExternalPostgres() {
			return false, r.keepManaged(ctx, p, tradingv1alpha1.ConditionDatabaseReady, &appsv1.StatefulSet{}, postgresName(p.stack), "PostgreSQL", why)
		}
		return false, nil
	}
	rollout, err := r.runtimeRollout(ctx, p)
	if err != nil {
		return false, err
	}
	if p.spec.Spec.Redis.Mode != tradingv1alpha1.RedisManaged {
		name := redisName(p.stack)
		if rollout != "" {
			if err := r.keepManaged(ctx, p, tradingv1alpha1.ConditionCacheReady, &appsv1.Deployment{}, name, "Redis", rollout); err != nil {
				return false, err
			}
		} else {
			for _, obj := range []client.Object{&appsv1.Deployment{}, &corev1.Service{}} {
				if err := r.deleteIfExists(ctx, p, objectNamed(obj, p.stack.Namespace, name)); err != nil {
					return false, err
				}
			}
		}
	}
	if !p.spec.ExternalPostgres() {
		return false, nil
	}
	why := rollout
	if migration := meta.FindStatusCondition(p.stack.Status.Conditions, tradingv1alpha1.ConditionMigrationsSucceeded); p.stack.Status.Migration.Database != migrationDatabase(p) {
		why = "the migration of the external database has not succeeded yet (see MigrationsSucceeded)"
		if migration != nil && migration.Reason == tradingv1alpha1.ReasonMigrationFailed {
			why = "the migration of the external database failed (see MigrationsSucceeded): the runtime's pods from before serve from it"
		}
	}
	if why != "" {
		return false, r.keepManaged(ctx, p, tradingv1alpha1.ConditionDatabaseReady, &appsv1.StatefulSet{}, postgresName(p.stack), "PostgreSQL", why)
	}
	released, err := r.releaseDatabaseVolumes(ctx, p)
	if err != nil {
		return false, err
	}
	for _, obj := range []client.Object{&appsv1.StatefulSet{}, &corev1.Service{}} {
		if !released {
			break // the StatefulSet's next status update brings the next pass
		}
		if err := r.deleteIfExists(ctx, p, objectNamed(obj, p.stack.Namespace, postgresName(p.stack))); err != nil {
			return false, err
		}
	}
	return false, nil
}

// keepManaged says in cond's message (set by an earlier step of this pass) that the managed
// backend workload (kind and name) is kept, and why, when it still runs. A cond this pass did
// not set (its step did not run) is left as an earlier pass wrote it, kept backend said or not:
// it would otherwise read as judged for this generation.
func (r *TradingStackReconciler) keepManaged(ctx context.Context, p *pass, cond string, workload client.Object, name, what, why string) error {
	if !p.evaluated[cond] {
		return nil
	}
	found, err := r.getCached(ctx, client.ObjectKey{Namespace: p.stack.Namespace, Name: name}, workload)
	if err != nil || !found || !isControlledBy(workload, p.stack) {
		return err
	}
	c := meta.FindStatusCondition(p.stack.Status.Conditions, cond)
	if c == nil {
		return nil
	}
	kind := "Deployment"
	if _, ok := workload.(*appsv1.StatefulSet); ok {
		kind = "StatefulSet"
	}
	p.setCondition(cond, c.Status, c.Reason, fmt.Sprintf("%s; the managed %s (%s %s) %s: %s", c.Message, what, kind, name, keptMessage, why))
	return nil
}

// keptMessage is what DatabaseReady or CacheReady says of a managed backend the spec left
// while it is kept.
const keptMessage = "is kept while the runtime may still use it"

// runtimeRollout says why runtime pods may still run with a configuration from before this
// pass (and use a managed backend the spec left), or "" when none can: the Deployment this
// pass applied has rolled out completely, or there is none.
func (r *TradingStackReconciler) runtimeRollout(ctx context.Context, p *pass) (string, error) {
	if p.runtimeHeld {
		// Rolled out or not, its template is the one from before: a Redis the spec left
		// (the same edit may move both) is still what its pods use.
		return fmt.Sprintf("Deployment %s keeps its pod template from before until the migration of the database the spec names now succeeds", apiName(p.stack)), nil
	}
	if p.runtime != nil {
		why := rolloutPending(p.runtime, p.stack.Status.Runtime.Replicas)
		if why != "" {
			// A rollout whose new pods the API server refuses (a used-up quota) goes on only
			// once someone acts, and the backend kept may hold the very quota they lack.
			why += p.runtimePodsRefused()
		}
		return why, nil
	}
	// Not applied: no image has migrated yet, so no Deployment should exist; one that does
	// (a status lost) runs pods of a template this pass did not judge.
	found, err := r.getCached(ctx, client.ObjectKey{Namespace: p.stack.Namespace, Name: apiName(p.stack)}, &appsv1.Deployment{})
	if err != nil || !found {
		return "", err
	}
	return fmt.Sprintf("Deployment %s has not been moved to the configuration the spec asks for yet", apiName(p.stack)), nil
}

// rolloutPending says why d has not finished rolling out its current template onto desired
// pods, or "" when it has: the Deployment controller saw the template, every pod runs it and
// is available, and no pod of an older one is left, not even terminating (it may still be
// answering requests). Stricter than rolledOut, which counts ready old pods as served: here an
// old pod still running is the question. With no pods wanted (a Deployment scaled to zero)
// nothing runs the old template once the old pods are gone.
func rolloutPending(d *appsv1.Deployment, desired int32) string {
	st := d.Status
	var why string
	switch old := st.Replicas - st.UpdatedReplicas; {
	case st.ObservedGeneration < d.Generation:
		why = "the Deployment controller has not seen its new pod template yet"
	case st.UpdatedReplicas < desired || old > 0:
		why = fmt.Sprintf("%d of %d pods run its current pod template, %d an older one", st.UpdatedReplicas, desired, max(old, 0))
	case st.AvailableReplicas < desired:
		why = fmt.Sprintf("%d of %d pods of its current pod template are available", st.AvailableReplicas, desired)
	case ptr.Deref(st.TerminatingReplicas, 0) > 0:
		why = fmt.Sprintf("pods of an older pod template are still terminating: %d", *st.TerminatingReplicas)
	default:
		return ""
	}
	return fmt.Sprintf("Deployment %s has not finished rolling out (%s)", d.Name, why)
}

// managedMaxConnections is the managed PostgreSQL's max_connections (the image's default);
// migrationConns is what a migration Job holds at most (one session, one for the lock).
const (
	managedMaxConnections = 100
	migrationConns        = 2
)

// poolsWarning says, for the managed database, when the runtime's pools together may ask for
// more connections than it accepts: the most pods at once (replicas or autoscaling's maximum,
// plus the one a rolling update adds) times spec.postgres.pool.maxConns, plus a migration. A
// pool opens connections only under load, so the stack works until the load comes, and then
// requests fail with 503 ("too many clients"); said here, where a platform team looks, with
// the largest maxConns that fits. "" when they fit.
func poolsWarning(s *tradingv1alpha1.TradingStack) string {
	pods := s.Spec.Runtime.Replicas
	if a := s.Spec.Runtime.Autoscaling; a != nil {
		pods = a.MaxReplicas
	}
	pods++ // a rolling update runs one more (maxSurge 1)
	want := int(pods)*int(s.Spec.Postgres.Pool.MaxConns) + migrationConns
	if want <= managedMaxConnections {
		return ""
	}
	fits := (managedMaxConnections - migrationConns) / int(pods)
	advice := fmt.Sprintf("set maxConns to %d or less (and minConns no more than that)", fits)
	if fits < 1 {
		advice = fmt.Sprintf("at most %d pods (%d replicas), or an external database with more connections", managedMaxConnections-migrationConns, managedMaxConnections-migrationConns-1)
	}
	return fmt.Sprintf("; warning: the runtime's pools may open %d connections (%d pods at most, counting a rolling update's extra one, x spec.postgres.pool.maxConns %d, plus a migration), more than the database's %d: under load requests would fail; %s",
		want, pods, s.Spec.Postgres.Pool.MaxConns, managedMaxConnections, advice)
}

// storageNotApplied says which part of spec.postgres.managed.storage the volume does not
// follow, or "". The schema refuses a smaller size or another class once they are set, and
// a size under the 10Gi default on a stack created without spec.postgres.managed (whose
// defaults were never stored); not a class given later to such a stack, nor a size under a
// volume grown by hand, nor a stack stored before that rule: the volume then keeps its size
// and class, and the condition says so instead of pretending the spec holds.
func storageNotApplied(desired, current []corev1.PersistentVolumeClaim, claimClass func(template string) string) string {
	var why []string
	for _, want := range desired {
		for _, have := range current {
			if have.Name != want.Name {
				continue
			}
			wantSize, haveSize := want.Spec.Resources.Requests[corev1.ResourceStorage], have.Spec.Resources.Requests[corev1.ResourceStorage]
			if wantSize.Cmp(haveSize) < 0 {
				why = append(why, fmt.Sprintf("the volume keeps %s: storage cannot shrink to %s", haveSize.String(), wantSize.String()))
			}
			if w, h := ptr.Deref(want.Spec.StorageClassName, ""), ptr.Deref(have.Spec.StorageClassName, ""); w != "" && w != h {
				if h == "" {
					if h = claimClass(have.Name); h == w {
						continue // the default class, named now: nothing changes
					}
				}
				if h == "" {
					h = "the cluster's default"
				}
				why = append(why, fmt.Sprintf("the volume keeps storage class %s: the class of an existing volume cannot change to %s", h, w))
			}
		}
	}
	if len(why) == 0 {
		return ""
	}
	return "; spec.postgres.managed.storage is not applied: " + strings.Join(why, "; ")
}

// growVolumes carries a grown spec.postgres.managed.storage.size to the
// database's PersistentVolumeClaim (the StatefulSet's claim template cannot
// change). The schema only lets the size grow; a storage class that cannot
// expand volumes makes the API server refuse, which is no error to retry with
// backoff: a warning on DatabaseReady says the volume keeps its size and why
// (the stack read as matching its spec, with only a Warning event per pass
// telling otherwise), and one Warning event announces it.
func (r *TradingStackReconciler) growVolumes(ctx context.Context, p *pass, desired, current *appsv1.StatefulSet) error {
	for _, want := range desired.Spec.VolumeClaimTemplates {
		size := want.Spec.Resources.Requests[corev1.ResourceStorage]
		for _, have := range current.Spec.VolumeClaimTemplates {
			if have.Name != want.Name {
				continue
			}
			old := have.Spec.Resources.Requests[corev1.ResourceStorage]
			if size.Cmp(old) <= 0 {
				continue
			}
			// One replica: the claim of pod 0 is the database's volume.
			name := fmt.Sprintf("%s-%s-0", want.Name, current.Name)
			pvc := &corev1.PersistentVolumeClaim{}
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: current.Namespace, Name: name}, pvc); err != nil {
				if apierrors.IsNotFound(err) {
					continue // not provisioned yet; the next pass grows it
				}
				return err
			}
			if pvc.Spec.Resources.Requests.Storage().Cmp(size) >= 0 {
				continue
			}
			grow := &corev1.PersistentVolumeClaim{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: current.Namespace},
				Spec: corev1.PersistentVolumeClaimSpec{Resources: corev1.VolumeResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceStorage: size},
				}},
			}
			u, err := applyContent(grow)
			if err != nil {
				return err
			}
			if err := applyRequest(ctx, r.Client, u); err != nil {
				if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
					p.warn(tradingv1alpha1.ConditionDatabaseReady,
						fmt.Sprintf("; warning: PersistentVolumeClaim %s keeps %s: growing it to %s was refused: %v",
							name, pvc.Spec.Resources.Requests.Storage().String(), size.String(), err),
						"VolumeNotExpanded", "Resize")
					continue
				}
				return err
			}
			r.Recorder.Eventf(p.stack, pvc, corev1.EventTypeNormal, "VolumeExpanded", "Resize",
				"PersistentVolumeClaim %s grows from %s to %s", name, pvc.Spec.Resources.Requests.Storage().String(), size.String())
		}
	}
	return nil
}

// keepClaimTemplates returns the existing templates without their status, so
// that apply leaves them as they are.
func keepClaimTemplates(existing []corev1.PersistentVolumeClaim) []corev1.PersistentVolumeClaim {
	out := make([]corev1.PersistentVolumeClaim, len(existing))
	for i, t := range existing {
		out[i] = corev1.PersistentVolumeClaim{
			// As the API server stores them (the cache's copy may not carry them).
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
			ObjectMeta: metav1.ObjectMeta{Name: t.Name, Labels: t.Labels, Annotations: t.Annotations},
			Spec:       *t.Spec.DeepCopy(),
			// As stored (the API server defaults it to Pending): the list is atomic, so a
			// restarted operator compares it whole (appliedAsDesired).
			Status: *t.Status.DeepCopy(),
		}
	}
	return out
}

// reconcileExternalDatabase checks that the user's DSN Secret and key exist (and the CA
// bundle's, when the spec names one). A missing Secret is a condition the user can act on, not
// an error to retry hot: the later steps wait (they would hash and mount a Secret that is not
// there).
func (r *TradingStackReconciler) reconcileExternalDatabase(ctx context.Context, p *pass) (bool, error) {
	ext := p.spec.Spec.Postgres.External
	for _, need := range []userSecret{
		{ref: &ext.ConnectionSecretRef, field: "spec.postgres.external.connectionSecretRef"},
		{ref: ext.CASecretRef, field: "spec.postgres.external.caSecretRef", caBundle: true},
	} {
		if stop, err := r.needUserSecret(ctx, p, tradingv1alpha1.ConditionDatabaseReady, "", need); stop || err != nil {
			return stop, err
		}
	}
	how := ""
	if ca := ext.CASecretRef; ca != nil {
		how = fmt.Sprintf(", its server certificate checked against the CAs of Secret %s key %s", ca.Name, ca.Key)
	}
	p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase,
		fmt.Sprintf("using the external database from Secret %s key %s%s", ext.ConnectionSecretRef.Name, ext.ConnectionSecretRef.Key, how))
	return false, nil
}

// userSecret is one key of a user's Secret that a spec field names (nil ref: the field is
// unset, nothing is needed). A CA bundle must hold a PEM certificate besides.
type userSecret struct {
	ref      *tradingv1alpha1.SecretKeyReference
	field    string
	caBundle bool
}

// needUserSecret reads a user's Secret key the pods need. When it is missing (or, for a CA
// bundle, holds no certificate) it sets cond False, with missingReason, or the reason
// readUserSecret gives when that is "", and says stop: the Secret's appearance or edit
// triggers the next pass (usersecrets.go). Otherwise the key joins the configuration hash
// (only that key: secretKey), so that a change of it rolls the pods.
func (r *TradingStackReconciler) needUserSecret(ctx context.Context, p *pass, cond, missingReason string, need userSecret) (stop bool, err error) {
	if need.ref == nil {
		return false, nil
	}
	secret, reason, msg, err := r.readUserSecret(ctx, p.stack.Namespace, *need.ref, need.field)
	if err != nil {
		return false, err
	}
	if secret == nil {
		if missingReason != "" {
			reason = missingReason
		}
		p.setCondition(cond, metav1.ConditionFalse, reason, msg)
		return true, nil
	}
	if need.caBundle {
		if msg := caBundleProblem(secret, *need.ref, need.field); msg != "" {
			p.setCondition(cond, metav1.ConditionFalse, tradingv1alpha1.ReasonInvalidCertificate, msg)
			return true, nil
		}
	}
	p.runtimeSecrets = append(p.runtimeSecrets, secretKey(secret, need.ref.Key))
	return false, nil
}

// readUserSecret reads a Secret the user made, directly from the API server
// (the cache holds only the operator's own Secrets). A nil Secret with a
// reason and message means it or its key is missing.
func (r *TradingStackReconciler) readUserSecret(ctx context.Context, namespace string, ref tradingv1alpha1.SecretKeyReference, field string) (*corev1.Secret, string, string, error) {
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, tradingv1alpha1.ReasonExternalSecretNotFound,
				fmt.Sprintf("Secret %s named by %s does not exist in namespace %s", ref.Name, field, namespace), nil
		}
		return nil, "", "", fmt.Errorf("read secret %s: %w", ref.Name, err)
	}
	if len(secret.Data[ref.Key]) == 0 {
		return nil, tradingv1alpha1.ReasonExternalSecretKeyAbsent,
			fmt.Sprintf("Secret %s named by %s has no key %s", ref.Name, field, ref.Key), nil
	}
	return secret, "", "", nil
}

// secretKey is the part of a user's Secret that the pods use, one key, for the configuration
// hash: a change of another key of that Secret (a cert-manager Secret's tls.key next to its
// ca.crt, say) must not roll the pods.
func secretKey(s *corev1.Secret, key string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name},
		Data: map[string][]byte{key: s.Data[key]}}
}

// caBundleProblem says what is wrong with a CA bundle a spec field names, or "" when its key
// holds at least one PEM certificate (what tradingd and pgx need to start).
func caBundleProblem(s *corev1.Secret, ref tradingv1alpha1.SecretKeyReference, field string) string {
	rest := s.Data[ref.Key]
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return fmt.Sprintf("Secret %s key %s named by %s holds no PEM certificate", ref.Name, ref.Key, field)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err == nil {
			return ""
		}
	}
}

// releaseDatabaseVolumes keeps the managed database's volumes when the stack moves to an
// external database, whatever retainDataOnDelete says: that setting is about deleting the
// stack, and an edit of its spec must not lose data. With retainDataOnDelete false the
// StatefulSet's claim policy is Delete, under which the StatefulSet controller makes the
// StatefulSet own its claims, so deleting it would delete them: the policy is turned to
// Retain (the controller then stops adding that owner reference) and the owner reference is
// removed from each claim before the StatefulSet is deleted. The claims keep their labels.
// released is false while the StatefulSet controller has not seen the Retain policy yet (a
// sync still running under Delete could make it own a claim again): the StatefulSet stays
// until its status says so.
func (r *TradingStackReconciler) releaseDatabaseVolumes(ctx context.Context, p *pass) (released bool, err error) {
	sts := &appsv1.StatefulSet{}
	found, err := r.getCached(ctx, client.ObjectKey{Namespace: p.stack.Namespace, Name: postgresName(p.stack)}, sts)
	if err != nil || !found || !isControlledBy(sts, p.stack) {
		return err == nil, err
	}
	if pol := sts.Spec.PersistentVolumeClaimRetentionPolicy; pol != nil && pol.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		body := []byte(`{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Retain"}}}`)
		if err := r.Patch(ctx, sts, client.RawPatch(types.MergePatchType, body), client.FieldOwner(FieldOwner)); err != nil {
			return false, client.IgnoreNotFound(err)
		}
	}
	if sts.Status.ObservedGeneration < sts.Generation {
		return false, nil
	}
	for _, tmpl := range sts.Spec.VolumeClaimTemplates {
		// Every ordinal that has a claim, whatever the replica count now (a StatefulSet scaled
		// to zero keeps its claims, owned under the Delete policy all the same).
		for i := 0; ; i++ {
			pvc := &corev1.PersistentVolumeClaim{}
			name := fmt.Sprintf("%s-%s-%d", tmpl.Name, sts.Name, i)
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: sts.Namespace, Name: name}, pvc); err != nil {
				if apierrors.IsNotFound(err) {
					break
				}
				return false, err
			}
			for j, ref := range pvc.OwnerReferences {
				if ref.UID != sts.UID {
					continue
				}
				path := fmt.Sprintf("/metadata/ownerReferences/%d", j)
				body, err := json.Marshal([]map[string]any{
					{"op": "test", "path": path + "/uid", "value": string(ref.UID)},
					{"op": "remove", "path": path},
				})
				if err != nil {
					return false, err
				}
				if err := r.Patch(ctx, pvc, client.RawPatch(types.JSONPatchType, body)); err != nil {
					return false, fmt.Errorf("release PersistentVolumeClaim %s from StatefulSet %s: %w", name, sts.Name, err)
				}
				r.Recorder.Eventf(p.stack, pvc, corev1.EventTypeNormal, "Retained", "Release",
					"Kept PersistentVolumeClaim %s: the database moved to an external one (delete the claim to free the volume)", name)
				break
			}
		}
	}
	return true, nil
}
