package controllers

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Server-Side Apply keeps what other managers own, list entries included: a container, an
// environment variable or a port added by hand to a child survives every apply, and a port
// edited by hand even breaks it (the edited entry is another key, so the apply adds ours
// again and the API server refuses two ports named "http"). The spec says a child edited by
// hand is put back, so before applying, the lists below are compared by key with the
// desired ones, and an entry the operator neither specifies nor owns is removed.
//
// Only the lists whose entries change what the service does are compared: the containers
// and init containers of a pod template, and in each of them its environment and ports
// (an added RATE_LIMIT_LOGIN=0 would turn a limit off), and a Service's ports. Jobs are
// left alone: their template cannot change.

// listKey names an entry of one of the compared lists; "" for a list not compared.
type listKey func(entry map[string]any) string

func byName(e map[string]any) string { s, _ := e["name"].(string); return s }

// byPortProtocol keys ports by number and protocol (TCP when unset, as the API server
// defaults it), the keys Server-Side Apply merges them by.
func byPortProtocol(field string) listKey {
	return func(e map[string]any) string {
		proto, _ := e["protocol"].(string)
		if proto == "" {
			proto = "TCP"
		}
		return number(e[field]) + "/" + proto
	}
}

func number(v any) string {
	switch n := v.(type) {
	case int64:
		return strconv.FormatInt(n, 10)
	case int32:
		return strconv.FormatInt(int64(n), 10)
	case int:
		return strconv.Itoa(n)
	case float64:
		return strconv.FormatFloat(n, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// hasComparedLists reports whether kind has lists revertOps compares (and replaceListsPatch
// replaces).
func hasComparedLists(kind string) bool {
	return kind == "Service" || kind == "Deployment" || kind == "StatefulSet"
}

// revertOps returns the JSON patch (RFC 6902) that removes from live every entry of the
// compared lists that desired does not set and that the operator's own applies do not own
// (managedFields), each removal guarded by a test of the entry's key, and what it removes
// (for the event); nil when there is nothing foreign. Removals only: a patch that set entries
// would make its field manager own them, and the apply could then never remove them when the
// spec drops them. Both objects are in unstructured form: desired as applied (applyContent),
// live as stored.
func revertOps(desired, live *unstructured.Unstructured) ([]map[string]any, []string) {
	if !hasComparedLists(desired.GetKind()) {
		return nil, nil
	}
	var ops []map[string]any
	var what []string
	ours := ownedFields(live)
	remove := func(path string, guard string, value any, desc string) {
		ops = append(ops,
			map[string]any{"op": "test", "path": path + "/" + guard, "value": value},
			map[string]any{"op": "remove", "path": path})
		what = append(what, desc)
	}
	// foreign walks live's list at path from the end (so that removals do not shift the
	// indices of those still to come) and calls found for each entry that is not desired's
	// and not the operator's.
	foreign := func(want, have any, key listKey, owned fieldSet, found func(i int, e map[string]any)) {
		keys := map[string]bool{}
		ws, _ := want.([]any)
		for _, w := range ws {
			if m, ok := w.(map[string]any); ok {
				keys[key(m)] = true
			}
		}
		hs, _ := have.([]any)
		for i := len(hs) - 1; i >= 0; i-- {
			if m, ok := hs[i].(map[string]any); ok && !keys[key(m)] && owned.entry(key, key(m)) == nil {
				found(i, m)
			}
		}
	}
	switch desired.GetKind() {
	case "Service":
		want, _, _ := unstructured.NestedFieldNoCopy(desired.Object, "spec", "ports")
		have, _, _ := unstructured.NestedFieldNoCopy(live.Object, "spec", "ports")
		foreign(want, have, byPortProtocol("port"), ours.at("spec", "ports"), func(i int, e map[string]any) {
			remove(fmt.Sprintf("/spec/ports/%d", i), "port", e["port"], "port "+byPortProtocol("port")(e))
		})
	case "Deployment", "StatefulSet":
		var whole [][2]any // foreign containers: removed after the entries inside ours
		for _, list := range []string{"containers", "initContainers"} {
			path := []string{"spec", "template", "spec", list}
			owned := ours.at(path...)
			want, _, _ := unstructured.NestedSlice(desired.Object, path...)
			have, _, _ := unstructured.NestedSlice(live.Object, path...)
			byNameWant := map[string]map[string]any{}
			for _, w := range want {
				if m, ok := w.(map[string]any); ok {
					byNameWant[byName(m)] = m
				}
			}
			for ci, h := range have {
				hc, _ := h.(map[string]any)
				wc := byNameWant[byName(hc)]
				if hc == nil || wc == nil {
					continue
				}
				in := owned.entry(byName, byName(hc))
				base := fmt.Sprintf("/spec/template/spec/%s/%d", list, ci)
				foreign(wc["env"], hc["env"], byName, in.at("env"), func(i int, e map[string]any) {
					remove(fmt.Sprintf("%s/env/%d", base, i), "name", e["name"], "env "+byName(e)+" in "+byName(hc))
				})
				key := byPortProtocol("containerPort")
				foreign(wc["ports"], hc["ports"], key, in.at("ports"), func(i int, e map[string]any) {
					remove(fmt.Sprintf("%s/ports/%d", base, i), "containerPort", e["containerPort"], "port "+key(e)+" in "+byName(hc))
				})
			}
			foreign(want, have, byName, owned, func(i int, e map[string]any) {
				whole = append(whole, [2]any{fmt.Sprintf("/spec/template/spec/%s/%d", list, i), e})
			})
		}
		for _, w := range whole {
			e := w[1].(map[string]any)
			remove(w[0].(string), "name", e["name"], "container "+byName(e))
		}
	}
	return ops, what
}

// fieldSet is a node of managedFields' fieldsV1 ("f:name" for a field, "k:{...}" for a list
// entry by its keys), merged over the operator's applies.
type fieldSet map[string]any

// ownedFields is the union of the fields the operator's applies own in obj.
func ownedFields(obj *unstructured.Unstructured) fieldSet {
	out := fieldSet{}
	for _, mf := range obj.GetManagedFields() {
		// Apply entries only: what the applies own, the apply removes when the spec drops it.
		if mf.Manager != FieldOwner || mf.Operation != metav1.ManagedFieldsOperationApply || mf.FieldsV1 == nil {
			continue
		}
		var m map[string]any
		if json.Unmarshal(mf.FieldsV1.Raw, &m) == nil {
			mergeFields(out, m)
		}
	}
	return out
}

func mergeFields(dst, src map[string]any) {
	for k, v := range src {
		sv, ok := v.(map[string]any)
		if !ok {
			continue
		}
		dv, ok := dst[k].(map[string]any)
		if !ok {
			dv = map[string]any{}
			dst[k] = dv
		}
		mergeFields(dv, sv)
	}
}

// at walks down fields by name; nil when the operator owns nothing there.
func (f fieldSet) at(path ...string) fieldSet {
	for _, p := range path {
		next, ok := f["f:"+p].(map[string]any)
		if !ok {
			return nil
		}
		f = next
	}
	return f
}

// entry is the node of the list entry whose key (as key computes it from the entry's key
// fields) is k, or nil.
func (f fieldSet) entry(key listKey, k string) fieldSet {
	for name, v := range f {
		rest, ok := strings.CutPrefix(name, "k:")
		if !ok {
			continue
		}
		var fields map[string]any
		if json.Unmarshal([]byte(rest), &fields) != nil || key(fields) != k {
			continue
		}
		if node, ok := v.(map[string]any); ok {
			return node
		}
	}
	return nil
}

func setPath(m map[string]any, path []string, v any) {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
}

// replaceListsPatch is the merge patch that sets every compared list of desired's kind to
// desired's, foreign entries or not (and a Recreate strategy back without rollingUpdate): the way out when an apply is refused as invalid because
// an entry of ours was edited by hand into something the apply cannot merge with (an env var
// from a Secret turned into a literal value gets both, which the API server refuses; so
// does a probe with another handler). nil for the kinds without such lists.
func replaceListsPatch(desired *unstructured.Unstructured) map[string]any {
	patch := map[string]any{}
	switch desired.GetKind() {
	case "Service":
		v, _, _ := unstructured.NestedFieldNoCopy(desired.Object, "spec", "ports")
		setPath(patch, []string{"spec", "ports"}, v)
	case "Deployment", "StatefulSet":
		for _, list := range []string{"containers", "initContainers"} {
			path := []string{"spec", "template", "spec", list}
			v, _, _ := unstructured.NestedFieldNoCopy(desired.Object, path...)
			setPath(patch, path, v) // absent: null removes it
		}
		// A Deployment's strategy turned to RollingUpdate by hand gets a rollingUpdate from
		// the API server's defaults, which nobody owns and which the desired Recreate forbids:
		// the strategy goes back as desired, without it.
		if st, ok, _ := unstructured.NestedMap(desired.Object, "spec", "strategy"); ok && st["type"] == "Recreate" {
			st["rollingUpdate"] = nil
			setPath(patch, []string{"spec", "strategy"}, st)
		}
	default:
		return nil
	}
	return patch
}
