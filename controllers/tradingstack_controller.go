package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// RBAC: exactly what the reconcile reads and writes. Secrets and ConfigMaps are
// read through a label-limited cache; the external database's Secret is read
// directly (get only), as is the database's PersistentVolumeClaim when its
// size grows.
//
// +kubebuilder:rbac:groups=trading.findmy.io,resources=tradingstacks,verbs=get;list;watch
// +kubebuilder:rbac:groups=trading.findmy.io,resources=tradingstacks/status,verbs=get;patch
// Children name the stack as their controller with blockOwnerDeletion, which clusters that
// enforce owner-reference permissions (OpenShift) allow only to who may update its finalizers.
// +kubebuilder:rbac:groups=trading.findmy.io,resources=tradingstacks/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=list
// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=servicemonitors;prometheusrules,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,verbs=get;list;watch
// The monitoring kinds' schemas, read after a restart (crdTypes). Every authenticated user
// may by default (system:discovery); said here for clusters that narrowed that binding.
// +kubebuilder:rbac:urls=/openapi/v3;/openapi/v3/*,verbs=get
// Events are read too, list only: the refusals a Job or StatefulSet controller says in none
// of its object's fields (createRefused).
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch;list

// TradingStackReconciler turns a TradingStack into its children. Each pass runs
// the steps of reconcileSteps in order and writes the status once at the end.
type TradingStackReconciler struct {
	client.Client
	// APIReader reads objects the cache does not hold: Secrets a user made (the
	// external database's DSN, the external Redis password), which carry none of
	// the operator's labels.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// MaxConcurrentReconciles lets a slow stack not hold up the others.
	MaxConcurrentReconciles int
	// WatchNamespaces limits the watch on users' Secrets like the manager's cache
	// (WATCH_NAMESPACE); empty means every namespace.
	WatchNamespaces []string

	monitoring *monitoringAPIs
	applied    appliedMemo
	crdTypes   *crdTypes
	// noopReverts is, per stack and child ("namespace/name/" + memoKey), the last removal
	// patch that changed nothing.
	noopReverts sync.Map
	// writtenFrom is, per stack ("namespace/name"), the resourceVersion its last status write
	// started from: a stack read at that version is one the cache has not caught up with.
	writtenFrom sync.Map
}

// NewTradingStackReconciler wires a reconciler to mgr's client, cache, API reader,
// RESTMapper and event recorder.
func NewTradingStackReconciler(mgr ctrl.Manager, concurrency int) *TradingStackReconciler {
	if concurrency < 1 {
		concurrency = 1
	}
	return &TradingStackReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                mgr.GetEventRecorder("trading-operator"),
		MaxConcurrentReconciles: concurrency,
		monitoring:              newMonitoringAPIs(mgr.GetRESTMapper(), mgr.GetCache()),
		crdTypes:                &crdTypes{cfg: mgr.GetConfig()},
	}
}

// pass carries what one reconcile learned from one step to the next.
type pass struct {
	// stack is the object as read (its status is updated in place); spec is a
	// copy with every default filled in, which the builders consume.
	stack    *tradingv1alpha1.TradingStack
	spec     *tradingv1alpha1.TradingStack
	original *tradingv1alpha1.TradingStackStatus

	// secrets the runtime reads, hashed into the pod template so that a change
	// rolls the pods.
	runtimeSecrets []*corev1.Secret
	// servingImage is the runtime image whose migration Job succeeded (empty:
	// none yet, so no runtime Deployment).
	servingImage string
	// runtime is the runtime Deployment as this pass applied it (nil: not applied);
	// retireManagedBackends reads its rollout, status.runtime.replicas the pods it is to run.
	runtime *appsv1.Deployment
	// runtimeWaiting is why the runtime's pods that are not ready wait, as this pass read them
	// (deploymentPodsWaiting), or "": said in RuntimeAvailable, and in Degraded when too few
	// replicas are ready.
	runtimeWaiting string
	// databaseMoved: the runtime serves an image migrated on a database other than the one
	// the spec names now (a move to or from an external database, a DSN edited to point
	// elsewhere), whose migration has not succeeded.
	databaseMoved bool
	// runtimeHeld: because of databaseMoved, the runtime Deployment was applied with the pod
	// template it had, so its pods keep the configuration from before the move, the managed
	// backends it names included.
	runtimeHeld bool
	// requeueAfter is set only while waiting on something no watch reports.
	requeueAfter time.Duration
	// failed says which step failed and why; the status then says that this
	// generation was not applied (summarize).
	failed string
	// failedInvalid: the API server refused what the step applied as invalid (a spec value
	// the schema lets through, such as requests above limits): retrying cannot help until
	// the spec changes.
	failedInvalid bool
	// cutShort says which step failed or waits, when one did: the steps after it run only if
	// they do not build on it (afterFailure).
	cutShort string
	// evaluated holds the conditions this pass set; the others say what an earlier pass found.
	evaluated map[string]bool
	// warnings are what a step found that needs the user's eye without changing the
	// condition's status (warn): writeStatus ends the condition's message with each, in the
	// order said, whatever the message says, and warnOnce announces each once.
	warnings map[string][]conditionWarning
}

// conditionWarning is a "; warning: ..." suffix of a condition's message and the reason and
// action of its Warning event.
type conditionWarning struct{ suffix, reason, action string }

// warn ends cond's message with suffix ("; warning: ...", "" for none) in this pass's
// status, and has a Warning event say it when it appears (warnOnce). A condition may carry
// several (DatabaseReady: a dsn without the password, a volume that cannot grow): each is
// kept, none replaces another.
func (p *pass) warn(cond, suffix, reason, action string) {
	if suffix == "" {
		return
	}
	if p.warnings == nil {
		p.warnings = map[string][]conditionWarning{}
	}
	p.warnings[cond] = append(p.warnings[cond], conditionWarning{suffix, reason, action})
}

// stepConditions are the conditions of the steps that have one: a failed step's own
// condition says it failed, unless its component is up (serving what an earlier spec asked).
var stepConditions = map[string]string{
	"database":   tradingv1alpha1.ConditionDatabaseReady,
	"cache":      tradingv1alpha1.ConditionCacheReady,
	"migrations": tradingv1alpha1.ConditionMigrationsSucceeded,
	"runtime":    tradingv1alpha1.ConditionRuntimeAvailable,
}

func (p *pass) setCondition(condType string, status metav1.ConditionStatus, reason, message string) {
	if p.evaluated == nil {
		p.evaluated = map[string]bool{}
	}
	p.evaluated[condType] = true
	meta.SetStatusCondition(&p.stack.Status.Conditions, metav1.Condition{
		Type:               condType,
		Status:             status,
		Reason:             reason,
		Message:            oneLine(message),
		ObservedGeneration: p.stack.Generation,
	})
}

// oneLine is message as one line, "; " between its lines: a condition's message is read in
// one line (kubectl get, describe), and errors.Join (the policy and monitoring steps' errors
// together) or an admission webhook's answer may hold several.
func oneLine(message string) string {
	if !strings.ContainsAny(message, "\r\n") {
		return message
	}
	var lines []string
	for line := range strings.FieldsFuncSeq(message, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; ")
}

func (p *pass) requeue(d time.Duration) {
	if p.requeueAfter == 0 || d < p.requeueAfter {
		p.requeueAfter = d
	}
}

// runtimePodsRefused is why the runtime Deployment this pass applied cannot create pods
// (podsRefused), or "": said in RuntimeAvailable, in Degraded when too few replicas are
// ready, and where a managed backend is kept for its rollout.
func (p *pass) runtimePodsRefused() string {
	if p.runtime == nil {
		return ""
	}
	return podsRefused(p.runtime)
}

// step is one concern of the reconcile. It sets its conditions on the pass; it returns
// stop=true when the later steps cannot run yet because they would build on something missing
// (only the afterFailure ones still run), and an error only for API failures worth a retry.
type step struct {
	name string
	run  func(ctx context.Context, p *pass) (stop bool, err error)
	// afterFailure: the step runs even when an earlier step failed or waits (p.cutShort).
	// The policy and monitoring steps build on the spec alone: a PodDisruptionBudget an
	// admission policy refuses must not keep the HPA, the ServiceMonitor and the alerts from
	// being made (or put back) until someone lifts it, nor must a user's missing Secret, while
	// the runtime from before serves. The retired backends' step then only says what it keeps.
	afterFailure bool
}

func (r *TradingStackReconciler) steps() []step {
	return []step{
		{name: "network policies", run: r.reconcileNetworkPolicies},
		{name: "secrets", run: r.reconcileSecrets},
		{name: "database", run: r.reconcileDatabase},
		{name: "cache", run: r.reconcileCache},
		{name: "migrations", run: r.reconcileMigrations},
		{name: "runtime", run: r.reconcileRuntime},
		{name: "retired backends", run: r.retireManagedBackends, afterFailure: true},
		{name: "policy", run: r.reconcilePolicy, afterFailure: true},
		{name: "monitoring", run: r.reconcileMonitoring, afterFailure: true},
	}
}

// specOrMetadataChanged passes the updates of a child that are not its status alone.
var specOrMetadataChanged = predicate.Or(predicate.GenerationChangedPredicate{},
	predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{})

// hpaSpecOrMetadataChanged is specOrMetadataChanged for HPAs, whose generation follows the
// spec only with the HPAGeneration feature gate (beta in 1.37, absent before): the spec
// itself is compared.
var hpaSpecOrMetadataChanged = predicate.Or(predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		a, ok1 := e.ObjectOld.(*autoscalingv2.HorizontalPodAutoscaler)
		b, ok2 := e.ObjectNew.(*autoscalingv2.HorizontalPodAutoscaler)
		return !ok1 || !ok2 || !equality.Semantic.DeepEqual(a.Spec, b.Spec)
	},
}, predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{})

// Reconcile brings one TradingStack's children to the state its spec asks for.
func (r *TradingStackReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := log.FromContext(ctx)

	stack := &tradingv1alpha1.TradingStack{}
	if err := r.Get(ctx, req.NamespacedName, stack); err != nil {
		if apierrors.IsNotFound(err) {
			r.forgetStack(req.String())
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// The cache has not seen this reconciler's last status write yet: read the stack from the
	// API server. A pass on the cached copy would have its status write refused (the write
	// carries the resourceVersion read), but one that found nothing to change sent none: a
	// child that changed and changed back between the two passes left the status of the middle
	// state in place, and status writes wake no pass to mend it. (Returning "run again soon"
	// instead made controller-runtime forget a failing stack's backoff.)
	if from, ok := r.writtenFrom.Load(req.String()); ok && from == stack.ResourceVersion {
		fresh := &tradingv1alpha1.TradingStack{} // fresh: decoding into stack would merge its maps
		if err := r.APIReader.Get(ctx, req.NamespacedName, fresh); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		stack = fresh
	}
	// Deletion needs no work of ours: owned children go with the garbage
	// collector, and retained ones (the PVC, through the StatefulSet's retention
	// policy, and the generated Secrets, which carry no owner reference) stay.
	if !stack.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	p := &pass{stack: stack, spec: stack.WithDefaults(), original: stack.Status.DeepCopy()}

	if stack.Spec.Paused {
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused,
			"spec.paused is true: the operator does not change this stack's children")
		return finish(r.writeStatus(ctx, p), ctrl.Result{})
	}

	var failures []error
	for _, s := range r.steps() {
		if p.cutShort != "" && !s.afterFailure {
			continue // it would build on what failed or is missing
		}
		stop, err := s.run(ctx, p)
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			// The namespace is being deleted, the stack with it: nothing can be made in it any
			// more, and nothing is wrong. An error would be logged, retried with backoff until
			// the namespace is gone, and counted as a reconcile error; a status would be
			// written for nobody to read.
			logger.V(1).Info("namespace is being deleted; the stack goes with it", "step", s.name)
			return ctrl.Result{}, nil
		}
		if err != nil {
			// Record why on the stack; the workqueue retries with its per-object backoff
			// once the pass is over; other stacks are unaffected. Monitoring is not required
			// for Ready: its failure is its own condition's.
			if s.name == "monitoring" {
				p.setCondition(tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed, err.Error())
			} else {
				if p.failed != "" {
					p.failed += "; "
				}
				p.failed += fmt.Sprintf("%s: %v", s.name, err)
				p.failedInvalid = p.failedInvalid || apierrors.IsInvalid(err)
				if cond, ok := stepConditions[s.name]; ok && !meta.IsStatusConditionTrue(p.stack.Status.Conditions, cond) {
					p.setCondition(cond, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed, err.Error())
				}
			}
			failures = append(failures, fmt.Errorf("%s: %w", s.name, err))
			if p.cutShort == "" {
				p.cutShort = fmt.Sprintf("the %s step failed (see Ready)", s.name)
			}
			continue
		}
		if stop && p.cutShort == "" {
			p.cutShort = fmt.Sprintf("the %s step waits", s.name)
		}
	}
	if len(failures) > 0 {
		if serr := r.writeStatus(ctx, p); serr != nil && !errors.Is(serr, errStaleStack) {
			logger.Error(serr, "write status after a failed step")
		}
		return ctrl.Result{}, errors.Join(failures...)
	}
	return finish(r.writeStatus(ctx, p), ctrl.Result{RequeueAfter: p.requeueAfter})
}

// finish ends a pass after its status write: a write refused because the pass read a stale
// stack runs the pass again soon, without an error (which would be logged and back off).
func finish(writeErr error, res ctrl.Result) (ctrl.Result, error) {
	switch {
	case errors.Is(writeErr, errStaleStack):
		return ctrl.Result{RequeueAfter: staleStackRetry}, nil
	case writeErr != nil:
		return ctrl.Result{}, writeErr
	}
	return res, nil
}

// SetupWithManager watches TradingStacks (spec changes only: the operator's own
// status writes must not wake it) and every kind of child, so a child deleted or
// edited by hand is put back. A stack at rest runs on no timer: a pass asks to run again
// (p.requeue) only while it waits on what no watch reports (a running migration Job, a
// database without a pod, whose refusals are only events, a runtime pod that is not ready, a
// CRD settling).
func (r *TradingStackReconciler) SetupWithManager(mgr ctrl.Manager) error {
	userSecrets, err := r.userSecretWatch(mgr)
	if err != nil {
		return err
	}
	c, err := ctrl.NewControllerManagedBy(mgr).
		// A change of an annotation wakes the stack too: `kubectl annotate` is how a user asks
		// for a pass now, after fixing what the last one failed on (a quota, RBAC, a webhook:
		// nothing the operator watches).
		For(&tradingv1alpha1.TradingStack{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&appsv1.StatefulSet{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&batchv1.Job{}).
		// Their status (the autoscaler's metrics every 15 s, the budget's allowed disruptions)
		// is nothing the operator reads: only a change of their spec, labels or annotations
		// (edited by hand, to be put back), or their deletion, needs a pass.
		Owns(&policyv1.PodDisruptionBudget{}, builder.WithPredicates(specOrMetadataChanged)).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}, builder.WithPredicates(hpaSpecOrMetadataChanged)).
		Owns(&networkingv1.NetworkPolicy{}).
		// Secrets are mapped by their instance label rather than the owner
		// reference: retained Secrets have none, and must still be put back.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(stackFromInstanceLabel)).
		// Users' Secrets (external DSN, Redis password) by name, from a metadata-only cache.
		WatchesRawSource(userSecrets).
		// The prometheus-operator CRDs may be installed after the operator
		// started; their appearance re-reconciles every stack.
		WatchesMetadata(&apiextensionsv1.CustomResourceDefinition{},
			handler.EnqueueRequestsFromMapFunc(r.monitoringCRDChanged),
			builder.WithPredicates(predicate.NewPredicateFuncs(isMonitoringCRD))).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles, RateLimiter: retryLimiter()}).
		Build(r)
	if err != nil {
		return err
	}
	r.monitoring.controller = c
	return nil
}

// maxRetryDelay caps the backoff of a stack whose pass keeps failing. The default's cap (1000 s)
// left a stack whose cause was fixed (a quota raised, RBAC granted) waiting up to 16 minutes;
// a failing pass costs a few reads and one write, so a retry every 2 minutes is cheap.
const maxRetryDelay = 2 * time.Minute

// retryLimiter is controller-runtime's default rate limiter (per item exponential from 5 ms,
// and 10 per second overall with a burst of 100) with the per-item backoff capped at
// maxRetryDelay.
func retryLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, maxRetryDelay),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

// stackFromInstanceLabel maps a managed object to the stack named by its
// app.kubernetes.io/instance label.
func stackFromInstanceLabel(_ context.Context, obj client.Object) []ctrl.Request {
	if obj.GetLabels()[ManagedByLabel] != ManagedByValue {
		return nil
	}
	name := obj.GetLabels()[instanceLabel]
	if name == "" {
		return nil
	}
	return []ctrl.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: name}}}
}

// getCached reads obj from the cache; found is false when it does not exist.
func (r *TradingStackReconciler) getCached(ctx context.Context, key client.ObjectKey, obj client.Object) (bool, error) {
	if err := r.Get(ctx, key, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// forgetStack drops what the reconciler remembers of a deleted stack (key
// "namespace/name"), so that its memory does not grow with every stack that ever existed.
func (r *TradingStackReconciler) forgetStack(key string) {
	r.applied.forgetStack(key)
	r.writtenFrom.Delete(key)
	r.noopReverts.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), key+"/") {
			r.noopReverts.Delete(k)
		}
		return true
	})
}
