package controllers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/kube-openapi/pkg/spec3"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// FieldOwner is the one field manager every write of the operator uses, so that
// Server-Side Apply compares only the fields this operator set and never fights
// over fields the API server or other controllers default.
const FieldOwner = "trading-operator"

// handoverFieldOwner is the operator's second field manager: it holds a Deployment's
// spec.replicas between the operator's apply giving the count up (autoscaling turned on) and
// the HorizontalPodAutoscaler's first scale (see handOverReplicas).
const handoverFieldOwner = "trading-operator-handover"

// applyContent converts a typed object built by a desired* function (TypeMeta
// set) into the content of an apply request, without the fields a Go struct
// cannot leave out: nulls (metadata.creationTimestamp and every unset pointer)
// and the status, which belongs to other writers. The operator then claims only
// what it actually specified.
func applyContent(obj client.Object) (*unstructured.Unstructured, error) {
	if obj.GetObjectKind().GroupVersionKind().Kind == "" {
		return nil, fmt.Errorf("apply %T %s: TypeMeta not set", obj, obj.GetName())
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("apply %T %s: %w", obj, obj.GetName(), err)
	}
	delete(content, "status")
	pruneNulls(content)
	if md, ok := content["metadata"].(map[string]any); ok {
		for _, k := range []string{"resourceVersion", "managedFields", "uid", "generation"} {
			delete(md, k)
		}
	}
	return &unstructured.Unstructured{Object: content}, nil
}

// pruneNulls removes nil values from maps (and maps inside lists): in a typed Go
// object nil means "not specified", while in an apply request an explicit null
// would mean "remove this field".
func pruneNulls(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if e == nil {
				delete(t, k)
				continue
			}
			pruneNulls(e)
		}
	case []any:
		for _, e := range t {
			pruneNulls(e)
		}
	}
}

// applyRequest sends u with Server-Side Apply and force: the operator owns the
// fields it sets, even against a hand edit. u is replaced with the object as
// stored. An apply that changes nothing does not bump the resourceVersion.
func applyRequest(ctx context.Context, c client.Client, u *unstructured.Unstructured) error {
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// appliedMemo remembers, per object, the hash of what the operator last applied
// and the resourceVersion the API server answered with. When the cached object
// still has that resourceVersion and the desired content is unchanged, nobody
// has touched the object since, and the apply is skipped: a resync of a
// converged stack sends no requests at all. Any edit (by hand, by another
// controller, a status update) changes the resourceVersion, and the next pass
// applies again. After a restart the memo is empty and every child is applied
// once (those applies change nothing).
//
// A resourceVersion also moves when only the status changes: an autoscaler writes its
// metrics every 15 s, a disruption budget its allowed disruptions whenever a pod's
// readiness changes, a StatefulSet its pods' revisions. For the kinds whose status other
// controllers write (statusWritten), the API server bumps metadata.generation on every
// change of the spec, so the record also keeps the generation and a hash of the metadata a
// hand edit can change (metadataSum); a moved resourceVersion with both the same is a status
// write: the record takes the new resourceVersion and no request is sent. Without that, the
// first pass after such a write (a resync, another child's event) sent a no-op apply. (A
// hash of the whole stored object would not do: the typed cache drops fields this client
// does not know, which a newer cluster may hold, and protobuf drops the claim templates'
// apiVersion and kind.)
type appliedMemo struct {
	m sync.Map // key -> appliedRecord
}

type appliedRecord struct {
	sum [32]byte
	// generation, meta (metadataSum) and, for an HPA, spec (hpaSpecSum) of the object as the
	// apply left it.
	generation      int64
	meta            [32]byte
	spec            [32]byte
	resourceVersion string
	uid             string
	stack           string // namespace/name of the stack it belongs to
}

func memoKey(u *unstructured.Unstructured) string {
	return u.GetAPIVersion() + "/" + u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

func contentSum(u *unstructured.Unstructured) ([32]byte, error) {
	b, err := json.Marshal(u.Object) // maps marshal with sorted keys: stable
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// unchanged reports whether cached, the child as the cache has it, is still what the
// operator last applied with the desired content sum: the same resourceVersion, or for a
// statusWritten kind the same generation and metadata, in which case the record moves to the
// new resourceVersion.
func (m *appliedMemo) unchanged(key string, sum [32]byte, cached client.Object, kind string) bool {
	v, ok := m.m.Load(key)
	rv := cached.GetResourceVersion()
	if !ok || rv == "" {
		return false
	}
	rec := v.(appliedRecord)
	if rec.sum != sum {
		return false
	}
	if rec.resourceVersion == rv {
		return true
	}
	switch {
	case !statusWritten(kind) || metadataSum(cached) != rec.meta:
		return false
	case kind == hpaKind:
		// An HPA's generation follows its spec only with the HPAGeneration feature gate
		// (beta in 1.37, absent before): its spec is compared instead.
		if hpaSpecSum(cached) != rec.spec {
			return false
		}
	case rec.generation == 0 || cached.GetGeneration() != rec.generation:
		return false
	}
	rec.resourceVersion = rv
	m.m.CompareAndSwap(key, v, rec)
	return true
}

func (m *appliedMemo) record(key string, sum [32]byte, stored metav1.Object, stack string) {
	rec := appliedRecord{sum: sum, generation: stored.GetGeneration(), meta: metadataSum(stored),
		resourceVersion: stored.GetResourceVersion(), uid: string(stored.GetUID()), stack: stack}
	switch o := stored.(type) {
	case *unstructured.Unstructured:
		if o.GetKind() == hpaKind {
			rec.spec = hpaSpecSum(o)
		}
	case *autoscalingv2.HorizontalPodAutoscaler:
		rec.spec = hpaSpecSum(o)
	}
	m.m.Store(key, rec)
}

const hpaKind = "HorizontalPodAutoscaler"

// hpaSpecSum hashes an HPA's spec as the typed cache holds it (an unstructured one, the
// apply's answer, is converted first, so that both hash alike); a zero sum when it cannot.
func hpaSpecSum(obj any) [32]byte {
	if u, ok := obj.(*unstructured.Unstructured); ok {
		typed := &autoscalingv2.HorizontalPodAutoscaler{}
		if runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, typed) != nil {
			return [32]byte{}
		}
		obj = typed
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return [32]byte{}
	}
	b, _ := json.Marshal(content["spec"])
	return sha256.Sum256(b)
}

// statusWritten: the kinds of child whose status other controllers write, and whose
// generation the API server bumps on every change of their spec (an HPA's only with a
// feature gate: see unchanged).
func statusWritten(kind string) bool {
	switch kind {
	case "Deployment", "StatefulSet", hpaKind, "PodDisruptionBudget", "Job",
		"ServiceMonitor": // prometheus-operator writes its bindings when its status feature gate is on
		return true
	}
	return false
}

// metadataSum hashes the metadata a hand edit can change without a new generation.
func metadataSum(obj metav1.Object) [32]byte {
	b, _ := json.Marshal([]any{obj.GetUID(), obj.GetLabels(), obj.GetAnnotations(), obj.GetOwnerReferences(),
		obj.GetFinalizers(), obj.GetDeletionTimestamp()})
	return sha256.Sum256(b)
}

// forgetStack drops the records of a deleted stack's children, so the memo
// does not grow with every stack that ever existed.
func (m *appliedMemo) forgetStack(stack string) {
	m.m.Range(func(k, v any) bool {
		if v.(appliedRecord).stack == stack {
			m.m.Delete(k)
		}
		return true
	})
}

func (m *appliedMemo) forget(key string) { m.m.Delete(key) }

// known reports whether key has a record (none after a restart).
func (m *appliedMemo) known(key string) bool {
	_, ok := m.m.Load(key)
	return ok
}

// builtinTypes holds the schemas of Kubernetes' own kinds (client-go's), which tell how
// Server-Side Apply keys their lists: what appliedAsDesired needs to read managedFields.
var builtinTypes = applyconfigurations.NewTypeConverter(clientgoscheme.Scheme)

// crdTypes holds the schemas of the other kinds (the monitoring CRDs), read once per
// group/version from the OpenAPI v3 document the API server publishes for it. A CRD
// installed again with another schema can make them stale: appliedAsDesired then finds a
// difference (or cannot read the object) and the apply goes as usual. A document that
// could not be had is not asked for again for a minute (the apply goes meanwhile).
type crdTypes struct {
	cfg  *rest.Config
	mu   sync.Mutex
	byGV map[schema.GroupVersion]crdTypesEntry
}

type crdTypesEntry struct {
	tc managedfields.TypeConverter // nil: the fetch failed at "at"
	at time.Time
}

const crdTypesRetry = time.Minute

// converter returns the TypeConverter of gv's kinds, or nil (the caller applies). The
// fetch runs outside the lock, bounded by ctx, so a slow API server holds up only the
// passes that need it.
func (c *crdTypes) converter(ctx context.Context, gv schema.GroupVersion) managedfields.TypeConverter {
	if c == nil || c.cfg == nil {
		return nil
	}
	c.mu.Lock()
	e, ok := c.byGV[gv]
	c.mu.Unlock()
	if ok && (e.tc != nil || time.Since(e.at) < crdTypesRetry) {
		return e.tc
	}
	tc := fetchTypes(ctx, c.cfg, gv)
	c.mu.Lock()
	if c.byGV == nil {
		c.byGV = map[schema.GroupVersion]crdTypesEntry{}
	}
	c.byGV[gv] = crdTypesEntry{tc: tc, at: time.Now()}
	c.mu.Unlock()
	return tc
}

func fetchTypes(ctx context.Context, cfg *rest.Config, gv schema.GroupVersion) managedfields.TypeConverter {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil
	}
	paths, err := dc.OpenAPIV3WithContext(ctx).PathsWithContext(ctx)
	if err != nil {
		return nil
	}
	doc, ok := paths["apis/"+gv.Group+"/"+gv.Version]
	if !ok {
		return nil
	}
	b, err := doc.SchemaWithContext(ctx, runtime.ContentTypeJSON)
	if err != nil {
		return nil
	}
	var api spec3.OpenAPI
	if err := json.Unmarshal(b, &api); err != nil || api.Components == nil {
		return nil
	}
	tc, err := managedfields.NewTypeConverter(api.Components.Schemas, false)
	if err != nil {
		return nil
	}
	return tc
}

// unmanagedPaths are the fields the API server never records in managedFields.
var unmanagedPaths = fieldpath.NewSet(
	fieldpath.MakePathOrDie("apiVersion"),
	fieldpath.MakePathOrDie("kind"),
	fieldpath.MakePathOrDie("metadata", "name"),
	fieldpath.MakePathOrDie("metadata", "namespace"),
	fieldpath.MakePathOrDie("metadata", "creationTimestamp"),
	fieldpath.MakePathOrDie("metadata", "uid"),
	fieldpath.MakePathOrDie("metadata", "resourceVersion"),
	fieldpath.MakePathOrDie("metadata", "generation"),
	fieldpath.MakePathOrDie("metadata", "managedFields"),
)

// appliedAsDesired reports whether applying desired (apply content) to live (read from the
// API server, managedFields included), of a kind whose schemas types holds, would change
// nothing: the operator's apply entry owns exactly the fields desired sets (an apply also
// removes the fields it owned before and no longer sets: a spec changed, or an operator
// upgrade dropping a field), and live holds desired's values in all of them. Anything it
// cannot read, an Update entry of the operator's own (a put-back patch, dropped by the next
// apply) or an object types cannot read says no: the apply then goes as usual. What other
// managers added is revertOps' and foreignFieldOps' to find.
func appliedAsDesired(types managedfields.TypeConverter, desired, live *unstructured.Unstructured) bool {
	var entry *metav1.ManagedFieldsEntry
	for _, mf := range live.GetManagedFields() {
		if mf.Manager != FieldOwner {
			continue
		}
		if mf.Operation != metav1.ManagedFieldsOperationApply || mf.Subresource != "" || entry != nil {
			return false
		}
		entry = &mf
	}
	if entry == nil || entry.FieldsV1 == nil {
		return false
	}
	owned := &fieldpath.Set{}
	if err := owned.FromJSON(bytes.NewReader(entry.FieldsV1.Raw)); err != nil {
		return false
	}
	want, err := types.ObjectToTyped(desired)
	if err != nil {
		return false
	}
	have, err := types.ObjectToTyped(live)
	if err != nil {
		return false
	}
	wantSet, err := want.ToFieldSet()
	if err != nil {
		return false
	}
	leaves := wantSet.Leaves().Difference(unmanagedPaths)
	if !owned.Leaves().Equals(leaves) {
		return false
	}
	cmp, err := have.ExtractItems(leaves).Compare(want.ExtractItems(leaves))
	return err == nil && cmp.IsSame()
}

// appliedOwns reports whether the operator's apply (FieldOwner's Apply entry on the object
// itself) owns path in obj's managedFields (read from the API server: the cache strips them):
// the next apply that leaves path out removes it, unless another manager owns it too.
func appliedOwns(obj metav1.Object, path fieldpath.Path) bool {
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager != FieldOwner || mf.Operation != metav1.ManagedFieldsOperationApply || mf.Subresource != "" || mf.FieldsV1 == nil {
			continue
		}
		owned := &fieldpath.Set{}
		if err := owned.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
			// Unreadable: taken as owned, so that a handover is made rather than skipped.
			return true
		}
		if owned.Has(path) {
			return true
		}
	}
	return false
}

// uid is the UID of the object last applied under key, or "".
func (m *appliedMemo) uid(key string) string {
	if v, ok := m.m.Load(key); ok {
		return v.(appliedRecord).uid
	}
	return ""
}
