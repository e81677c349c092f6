package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

var (
	serviceMonitorGK = schema.GroupKind{Group: monitoringv1.SchemeGroupVersion.Group, Kind: monitoringv1.ServiceMonitorsKind}
	prometheusRuleGK = schema.GroupKind{Group: monitoringv1.SchemeGroupVersion.Group, Kind: monitoringv1.PrometheusRuleKind}
)

// crdSettle is how long after a monitoring CRD event a stack that still sees
// the kind as absent looks again: the API server serves a new CRD's resource a
// moment after the CRD object exists.
const crdSettle = 2 * time.Second

// informerSyncTimeout bounds the wait for a monitoring kind's informer to sync, and each
// kind's part of the monitoring step.
const informerSyncTimeout = 30 * time.Second

// monitoringAPIs answers "is the ServiceMonitor (PrometheusRule) CRD
// installed?" from a cache that lives until a monitoring.coreos.com CRD is
// created, changed or deleted, so a pass never runs discovery. Once a kind is
// there it also starts, once, a watch on it, so a ServiceMonitor deleted by
// hand is put back like any other child; when its CRD goes, the watch is stopped
// (unwatch), and started afresh when the CRD is back.
type monitoringAPIs struct {
	mapper     meta.RESTMapper
	cache      cache.Cache
	controller controller.Controller

	mu        sync.Mutex
	installed map[schema.GroupKind]lookup
	watching  map[schema.GroupKind]bool
	// read: the kinds a pass has read since their informer was last removed, so that
	// an informer of theirs may exist (unwatch).
	read      map[schema.GroupKind]bool
	changedAt time.Time
}

func newMonitoringAPIs(mapper meta.RESTMapper, c cache.Cache) *monitoringAPIs {
	return &monitoringAPIs{
		mapper:    mapper,
		cache:     c,
		installed: map[schema.GroupKind]lookup{},
		watching:  map[schema.GroupKind]bool{},
		read:      map[schema.GroupKind]bool{},
	}
}

// isInstalled looks the kind up once and remembers the answer. An absent
// kind is looked up again (at most every crdSettle, for all stacks together)
// during the minute after a monitoring CRD event: the API server starts
// serving a new CRD's resource a moment after the CRD object appears, so the
// first lookup after the event may still miss it.
func (m *monitoringAPIs) isInstalled(ctx context.Context, gk schema.GroupKind) (bool, error) {
	if exists, err := m.crdExists(ctx, gk); err != nil || !exists {
		if err == nil {
			// Also an informer a pass made after the CRD's event (it read the kind just
			// before the CRD went) is stopped here.
			m.unwatch(ctx, gk)
		}
		return false, err
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.installed[gk]; ok {
		settling := !m.changedAt.IsZero() && time.Since(m.changedAt) < time.Minute
		if e.present || !settling || time.Since(e.checkedAt) < crdSettle {
			return e.present, nil
		}
	}
	_, err := m.mapper.RESTMapping(gk, monitoringv1.SchemeGroupVersion.Version)
	switch {
	case err == nil:
		m.installed[gk] = lookup{present: true, checkedAt: time.Now()}
	case meta.IsNoMatchError(err):
		m.installed[gk] = lookup{present: false, checkedAt: time.Now()}
	default:
		return false, err
	}
	return m.installed[gk].present, nil
}

// crdExists tells whether the kind's CRD exists and is not being deleted, from the informer
// cache of CRD metadata: the RESTMapper never forgets a kind, so after the CRD was deleted
// only this tells that it is gone.
func (m *monitoringAPIs) crdExists(ctx context.Context, gk schema.GroupKind) (bool, error) {
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	if err := m.cache.Get(ctx, client.ObjectKey{Name: crdName(gk)}, crd); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	// Being deleted: its objects are being removed and none may be created, so it is as
	// good as gone (every stack's apply failed while it terminated).
	return crd.DeletionTimestamp == nil, nil
}

// forget drops the cached answers after a CRD event; the next pass asks the
// RESTMapper, which then re-reads that API group.
func (m *monitoringAPIs) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.installed = map[schema.GroupKind]lookup{}
	m.changedAt = time.Now()
}

func (m *monitoringAPIs) recentlyChanged() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.changedAt.IsZero() && time.Since(m.changedAt) < time.Minute
}

// watch starts watching the kind's objects owned by stacks, once.
func (m *monitoringAPIs) watch(gk schema.GroupKind, obj client.Object, scheme *runtime.Scheme) error {
	m.mu.Lock()
	m.read[gk] = true
	started := m.watching[gk] || m.controller == nil
	m.mu.Unlock()
	if started {
		return nil
	}
	// Get the informer synced first: a source started on a controller that is already
	// running only logs when its informer cannot be made (a CRD the API server does not
	// serve yet), and the watch would stay dead. An error here fails the pass instead,
	// and the next one tries again.
	ctx, cancel := context.WithTimeout(context.Background(), informerSyncTimeout)
	defer cancel()
	if _, err := m.cache.GetInformer(ctx, obj); err != nil {
		// Not left behind: an informer that cannot sync (the CRD went away meanwhile) would
		// log its failed lists for as long as the operator runs. The next pass makes a new one.
		m.unwatch(ctx, gk)
		return fmt.Errorf("watching %s: %w", gk, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.watching[gk] {
		return nil
	}
	src := source.Kind(m.cache, obj,
		handler.EnqueueRequestForOwner(scheme, m.mapper, &tradingv1alpha1.TradingStack{}, handler.OnlyControllerOwner()))
	if err := m.controller.Watch(src); err != nil {
		return err
	}
	m.watching[gk] = true
	return nil
}

// unwatch stops and drops the informer of a kind whose CRD is gone: left running, its
// reflector failed to list the kind and logged "Failed to watch" every few seconds (backing
// off to 30 s) for as long as the CRD stayed away. The kind is then no longer watched, and the
// next pass that finds the CRD installed again starts a fresh informer and watch (watch). The
// controller keeps the old source, whose handler sat on the stopped informer and gets no
// event again.
//
// Not only a watched kind: a pass that found the kind installed just before its CRD went
// may have made an informer since, by reading the kind (that read fails after
// informerSyncTimeout, and the stack is retried). Such a pass marks the kind read when it is
// done with it (reconcileMonitoring), after this ran, and the stack's next pass, which the
// CRD's event asked for, removes it. A kind never read is left alone: with WATCH_NAMESPACE,
// removing an informer asks the RESTMapper whether the kind is namespaced, which for a CRD
// never installed is a discovery request, on every pass.
func (m *monitoringAPIs) unwatch(ctx context.Context, gk schema.GroupKind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.read[gk] && !m.watching[gk] {
		return
	}
	if err := m.cache.RemoveInformer(ctx, emptyMonitoringObject(gk)); err != nil && !meta.IsNoMatchError(err) {
		// A kind the RESTMapper does not know has no informer either. Anything else is
		// logged, and the kind's next absent pass tries again.
		ctrl.LoggerFrom(ctx).Error(err, "stop watching a monitoring kind whose CRD is gone", "kind", gk.Kind)
		return
	}
	m.watching[gk] = false
	m.read[gk] = false
}

// readDone marks the kind read by a pass that is done with it (see unwatch).
func (m *monitoringAPIs) readDone(gk schema.GroupKind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.read[gk] = true
}

// crdGone stops watching the kinds whose CRD is gone, at the CRD's own event: with no stack
// left to run a pass, nothing else would.
func (m *monitoringAPIs) crdGone(ctx context.Context) {
	for _, gk := range []schema.GroupKind{serviceMonitorGK, prometheusRuleGK} {
		if exists, err := m.crdExists(ctx, gk); err == nil && !exists {
			m.unwatch(ctx, gk)
		}
	}
}

// emptyMonitoringObject is an empty object of a monitoring kind, to name its informer.
func emptyMonitoringObject(gk schema.GroupKind) client.Object {
	if gk == prometheusRuleGK {
		return &monitoringv1.PrometheusRule{}
	}
	return &monitoringv1.ServiceMonitor{}
}

// lookup is one RESTMapper answer.
type lookup struct {
	present   bool
	checkedAt time.Time
}

// crdName is the name of the CustomResourceDefinition of a monitoring kind.
func crdName(gk schema.GroupKind) string {
	if gk == prometheusRuleGK {
		return monitoringv1.PrometheusRuleName + "." + gk.Group
	}
	return monitoringv1.ServiceMonitorName + "." + gk.Group
}

// isMonitoringCRD selects the CustomResourceDefinitions of prometheus-operator.
func isMonitoringCRD(obj client.Object) bool {
	return strings.HasSuffix(obj.GetName(), "."+monitoringv1.SchemeGroupVersion.Group)
}

// monitoringCRDChanged forgets what was known about the monitoring kinds and
// re-reconciles every stack, so a CRD installed after the operator started
// brings the ServiceMonitors without a restart.
func (r *TradingStackReconciler) monitoringCRDChanged(ctx context.Context, _ client.Object) []ctrl.Request {
	r.monitoring.forget()
	r.monitoring.crdGone(ctx)
	stacks := &tradingv1alpha1.TradingStackList{}
	if err := r.List(ctx, stacks); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list TradingStacks after a monitoring CRD change")
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(stacks.Items))
	for i := range stacks.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&stacks.Items[i])})
	}
	return reqs
}

// reconcileMonitoring applies the ServiceMonitor and PrometheusRule when they
// are enabled and their CRDs exist, and deletes them when disabled. An absent
// CRD is reported in MonitoringReady; it is not an error and does not keep the
// stack from becoming Ready.
//
// Each of the two is tried whatever became of the other, as in reconcilePolicy: a
// ServiceMonitor an admission policy refuses must not keep the alerts away, whose
// TradingAPIDown (nothing of NAME-api scraped) is then what tells someone. The errors are
// returned together.
func (r *TradingStackReconciler) reconcileMonitoring(ctx context.Context, p *pass) (bool, error) {
	kinds := []struct {
		gk      schema.GroupKind
		name    string
		wanted  bool
		desired func() client.Object
		empty   func() client.Object
	}{
		{serviceMonitorGK, apiName(p.stack), p.spec.ServiceMonitorEnabled(),
			func() client.Object { return desiredServiceMonitor(p.spec) },
			func() client.Object { return &monitoringv1.ServiceMonitor{} }},
		{prometheusRuleGK, alertsName(p.stack), p.spec.PrometheusRuleEnabled(),
			func() client.Object { return desiredPrometheusRule(p.spec) },
			func() client.Object { return &monitoringv1.PrometheusRule{} }},
	}
	var missing, made []string
	var errs []error
	for _, k := range kinds {
		// Bounded: a pass that found the kind installed just before its CRD went (and its
		// informer was removed) makes a new informer at its next read of the kind, which
		// cannot sync and would hold the pass, a worker with it, for good. It fails instead,
		// and the stack's retry finds the CRD gone.
		ctx, cancel := context.WithTimeout(ctx, informerSyncTimeout)
		defer cancel()
		installed, err := r.monitoring.isInstalled(ctx, k.gk)
		if err != nil {
			return false, err
		}
		if !installed {
			if k.wanted {
				missing = append(missing, k.gk.Kind)
			}
			continue
		}
		defer r.monitoring.readDone(k.gk)
		if err := r.monitoring.watch(k.gk, k.empty(), r.Scheme); err != nil {
			return false, err
		}
		if !k.wanted {
			if err := r.deleteIfExists(ctx, p, objectNamed(k.empty(), p.stack.Namespace, k.name)); err != nil && !meta.IsNoMatchError(err) {
				errs = append(errs, err)
			}
			continue
		}
		if err := r.applyChild(ctx, p, k.desired()); err != nil {
			// An apply creates a missing object, so NotFound means the
			// resource itself is gone: the CRD went away since we looked.
			if meta.IsNoMatchError(err) || apierrors.IsNotFound(err) {
				r.monitoring.forget()
				missing = append(missing, k.gk.Kind)
				continue
			}
			errs = append(errs, err)
			continue
		}
		made = append(made, k.gk.Kind+" "+k.name)
		// The kind's informer may be behind the apply (one that lost its watch lists again
		// with backoff, seconds to tens of seconds): until its cache shows what was applied, a
		// deletion of it would reach no pass, and the stack would say MonitoringConfigured
		// without it. Look again soon. (Right after a creation, the next look finds it cached.)
		if found, err := r.getCached(ctx, client.ObjectKey{Namespace: p.stack.Namespace, Name: k.name}, k.empty()); err != nil {
			return false, err
		} else if !found {
			p.requeue(crdSettle)
		}
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}

	switch {
	case len(missing) > 0:
		p.setCondition(tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCRDNotInstalled,
			fmt.Sprintf("the %s CRD (%s) is not installed, so none is created; installing prometheus-operator's CRDs brings it without restarting the operator",
				strings.Join(missing, " and "), monitoringv1.SchemeGroupVersion))
		if r.monitoring.recentlyChanged() {
			p.requeue(crdSettle)
		}
	case len(made) == 0:
		p.setCondition(tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringDisabled,
			"spec.monitoring disables the ServiceMonitor and the PrometheusRule")
	default:
		p.setCondition(tradingv1alpha1.ConditionMonitoringReady, metav1.ConditionTrue, tradingv1alpha1.ReasonMonitoringConfigured,
			strings.Join(made, " and ")+" applied")
	}
	return false, nil
}
