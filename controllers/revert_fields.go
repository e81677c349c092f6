package controllers

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// The lists of revert.go are one case of a wider one: Server-Side Apply keeps every field
// that another manager set and the operator's applies do not own. `kubectl edit` adding
// hostNetwork, a hostPath volume, a capability, a command or a service account to a child
// would outlive every apply; so would a key added by hand to NAME-runtime (RATE_LIMIT_LOGIN=0
// turns the login limit off). foreignFieldOps finds those fields from managedFields: a field
// that a manager other than the operator owns (through the object itself, not its status or
// scale subresource), that the operator's applies do not own and that the desired object
// does not set, is removed. Fields that nobody owns (the API server's defaults, allocated
// cluster IPs) are left alone, and so are the parts of a child that others may rightly
// change (see skipField).

// revertsHandEdits reports whether the fields of kind that other managers set are removed
// after each apply (foreignFieldOps, on the apply's answer). Secrets are not: a value edited by hand is kept
// (tradingstack.md); Jobs neither: their template cannot change. The autoscaler, the
// disruption budget and the monitoring objects are: a `behavior` added by hand to the HPA
// (scaling down at once), a sampleLimit or relabelling added to the ServiceMonitor stayed
// for good, as nothing the operator applies owns them (EditsOfEveryKindReverted). Their
// controllers write only the status subresource, which foreignFieldOps leaves alone.
func revertsHandEdits(kind string) bool {
	switch kind {
	case "Deployment", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy",
		hpaKind, "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule":
		return true
	}
	return false
}

// walkedRoots are the top-level fields foreignFieldOps walks, per kind: what the spec decides.
// Metadata is not walked: labels and annotations are how other tools (Argo CD, `kubectl
// rollout restart`, service meshes) mark objects.
func walkedRoots(kind string) []string {
	if kind == "ConfigMap" {
		return []string{"data", "binaryData"}
	}
	return []string{"spec"}
}

// skipField reports whether the field at path (field names; "*" for a list entry) is left to
// others:
//   - spec.replicas: the HorizontalPodAutoscaler's (removing it would scale to one pod);
//   - fields that cannot change once set (a StatefulSet's selector, claim templates, service
//     name, pod management policy) or that the API server allocates (a Service's cluster IPs
//     and IP families);
//   - the pod template's metadata (`kubectl rollout restart` stamps an annotation there, and
//     meshes and config reloaders mark pods through it).
func skipField(kind string, path []string) bool {
	p := strings.Join(path, ".")
	switch p {
	case "spec.replicas", "spec.selector", "spec.template.metadata", "spec.volumeClaimTemplates",
		"spec.serviceName", "spec.podManagementPolicy":
		return kind == "Deployment" || kind == "StatefulSet"
	case "spec.clusterIP", "spec.clusterIPs", "spec.ipFamilies", "spec.ipFamilyPolicy", "spec.healthCheckNodePort":
		return kind == "Service"
	}
	return false
}

// wholeEntriesByRevert reports whether revert.go removes the foreign entries of the list at
// path itself (containers, their env and ports, a Service's ports; before the apply, which
// such an entry can make fail): foreignFieldOps only looks inside the entries the operator
// has (a hostPort added to its http port).
func wholeEntriesByRevert(path []string) bool {
	switch strings.Join(path, ".") {
	case "spec.template.spec.containers", "spec.template.spec.initContainers",
		"spec.template.spec.containers.*.env", "spec.template.spec.containers.*.ports",
		"spec.template.spec.initContainers.*.env", "spec.template.spec.initContainers.*.ports",
		"spec.ports":
		return true
	}
	return false
}

// foreignFieldOps returns the JSON patch that removes from live the fields other managers set
// and neither the operator owns nor desired sets, each guarded by a test of its current value,
// and a readable path for each (for the event). live must carry its managedFields (read from
// the API server: the cache strips them). Removals in a list come from its end first, so that
// an index is valid when its removal runs.
func foreignFieldOps(desired, live *unstructured.Unstructured) ([]map[string]any, []string) {
	kind := desired.GetKind()
	if !revertsHandEdits(kind) {
		return nil, nil
	}
	ours, theirs := fieldSet{}, fieldSet{}
	for _, mf := range live.GetManagedFields() {
		if mf.FieldsV1 == nil || mf.Subresource != "" {
			continue // status and scale are other controllers' business
		}
		var m map[string]any
		if json.Unmarshal(mf.FieldsV1.Raw, &m) != nil {
			continue
		}
		if mf.Manager == FieldOwner {
			// Every entry of the operator's: its applies, and an Update of its own (a put-back
			// patch) whose fields it set itself.
			mergeFields(ours, m)
		} else if mf.Operation == metav1.ManagedFieldsOperationUpdate || mf.Operation == metav1.ManagedFieldsOperationApply {
			mergeFields(theirs, m)
		}
	}
	w := &fieldWalk{kind: kind}
	for _, root := range walkedRoots(kind) {
		node, _ := theirs["f:"+root].(map[string]any)
		if node == nil {
			continue
		}
		w.walk([]string{root}, "/"+root, root, node, ours.at(root), live.Object[root], desired.Object[root])
	}
	return w.ops, w.what
}

type fieldWalk struct {
	kind string
	ops  []map[string]any
	what []string
}

func (w *fieldWalk) remove(pointer, readable string, value any) {
	w.ops = append(w.ops,
		map[string]any{"op": "test", "path": pointer, "value": value},
		map[string]any{"op": "remove", "path": pointer})
	w.what = append(w.what, readable)
}

// walk compares, at one node, the fields another manager owns (theirs) with the operator's
// (ours), the live value and the desired one. path names the node for skipField, pointer is
// its JSON pointer, readable its name in the event.
func (w *fieldWalk) walk(path []string, pointer, readable string, theirs, ours map[string]any, live, desired any) {
	if skipField(w.kind, path) {
		return
	}
	liveMap, _ := live.(map[string]any)
	desiredMap, _ := desired.(map[string]any)
	liveList, _ := live.([]any)
	desiredList, _ := desired.([]any)

	type entry struct {
		index           int
		name            string
		theirs, ours    map[string]any
		live, desired   any
		removeIfForeign bool
	}
	var entries []entry // list entries, removed or walked from the end
	for name, sub := range theirs {
		subTheirs, _ := sub.(map[string]any)
		var subOurs map[string]any
		if ours != nil {
			subOurs, _ = ours[name].(map[string]any)
		}
		switch {
		case strings.HasPrefix(name, "f:"):
			field := strings.TrimPrefix(name, "f:")
			v, ok := liveMap[field]
			if !ok {
				continue // gone already
			}
			var dv any
			if desiredMap != nil {
				dv = desiredMap[field]
			}
			childPath := append(slices.Clone(path), field)
			if skipField(w.kind, childPath) {
				continue
			}
			childPointer := pointer + "/" + escapePointer(field)
			childReadable := readable + "." + field
			if subOurs == nil && dv == nil {
				w.remove(childPointer, childReadable, v)
				continue
			}
			if hasChildren(subTheirs) {
				w.walk(childPath, childPointer, childReadable, subTheirs, subOurs, v, dv)
			}
		case strings.HasPrefix(name, "k:"):
			var keys map[string]any
			if json.Unmarshal([]byte(strings.TrimPrefix(name, "k:")), &keys) != nil {
				continue
			}
			i, dv := findEntry(liveList, desiredList, func(e any) bool { return matchesKeys(e, keys) })
			if i < 0 {
				continue
			}
			entries = append(entries, entry{index: i, name: describeKeys(keys), theirs: subTheirs, ours: subOurs,
				live: liveList[i], desired: dv, removeIfForeign: !wholeEntriesByRevert(path)})
		case strings.HasPrefix(name, "v:"):
			var value any
			if json.Unmarshal([]byte(strings.TrimPrefix(name, "v:")), &value) != nil {
				continue
			}
			i, dv := findEntry(liveList, desiredList, func(e any) bool { return sameJSON(e, value) })
			if i < 0 {
				continue
			}
			entries = append(entries, entry{index: i, name: fmt.Sprint(value), ours: subOurs, live: liveList[i], desired: dv, removeIfForeign: true})
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return b.index - a.index })
	for _, e := range entries {
		childPath := append(slices.Clone(path), "*")
		childPointer := fmt.Sprintf("%s/%d", pointer, e.index)
		childReadable := readable + "[" + e.name + "]"
		if e.ours == nil && e.desired == nil {
			if e.removeIfForeign {
				w.remove(childPointer, childReadable, e.live)
			}
			continue
		}
		if hasChildren(e.theirs) {
			w.walk(childPath, childPointer, childReadable, e.theirs, e.ours, e.live, e.desired)
		}
	}
}

// hasChildren reports whether a fieldsV1 node names fields or entries below it (not only "."
// for the node itself).
func hasChildren(node map[string]any) bool {
	for k := range node {
		if k != "." {
			return true
		}
	}
	return false
}

// findEntry returns the index in live of the entry match selects (-1: none) and desired's
// entry that match selects (nil: none).
func findEntry(live, desired []any, match func(any) bool) (int, any) {
	i := slices.IndexFunc(live, match)
	if j := slices.IndexFunc(desired, match); j >= 0 {
		return i, desired[j]
	}
	return i, nil
}

// matchesKeys reports whether a list entry has every key field of a "k:" node. A port's
// protocol left out (the desired object leaves it to the API server's default) is TCP.
func matchesKeys(e any, keys map[string]any) bool {
	m, ok := e.(map[string]any)
	if !ok {
		return false
	}
	for k, v := range keys {
		got, present := m[k]
		if !present && k == "protocol" {
			got = "TCP"
		}
		if !sameJSON(got, v) {
			return false
		}
	}
	return true
}

// sameJSON compares two values as JSON does (an int64 from the object and a float64 from
// the fieldsV1 key are the same number).
func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil {
		return reflect.DeepEqual(a, b)
	}
	return string(ja) == string(jb)
}

func describeKeys(keys map[string]any) string {
	var parts []string
	for k, v := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// escapePointer escapes a field name for a JSON pointer (RFC 6901).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
