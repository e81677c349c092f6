package controllers

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Server-Side Apply keeps what other managers own, list entries included: a container, an
// environment variable or a port added by hand to a child survives every apply, and a port
// edited by hand even breaks it (the edited entry is another key, so the apply adds ours
// again and the API server refuses two ports named "http"). The spec says a child edited by
// hand is put back, so before applying, the lists below are compared by key with the
// desired ones, and a list holding an entry the operator does not specify is replaced whole.
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

// revertPatch returns a JSON merge patch that replaces, in live, every compared list that
// holds an entry desired does not specify, with desired's list, and what it removes (for
// the event); nil when there is nothing foreign. Both objects are in unstructured form:
// desired as applied (applyContent), live as stored.
func revertPatch(desired, live *unstructured.Unstructured) (map[string]any, []string) {
	var foreign []string
	patch := map[string]any{}
	ours := ownedFields(live)
	switch desired.GetKind() {
	case "Service":
		path := []string{"spec", "ports"}
		foreign = append(foreign, revertList(desired.Object, live.Object, patch, path, byPortProtocol("port"), "port ", ours.at(path...))...)
	case "Deployment", "StatefulSet":
		tmpl := []string{"spec", "template", "spec"}
		for _, list := range []string{"containers", "initContainers"} {
			path := append(append([]string{}, tmpl...), list)
			owned := ours.at(path...)
			found := revertList(desired.Object, live.Object, patch, path, byName, list[:len(list)-1]+" ", owned)
			// Inside each of ours: its environment and ports. Any foreign entry there
			// replaces the whole list of containers too (a merge patch replaces lists).
			want, wanted, _ := unstructured.NestedSlice(desired.Object, path...)
			have, _, _ := unstructured.NestedSlice(live.Object, path...)
			for _, w := range want {
				wc, _ := w.(map[string]any)
				for _, h := range have {
					hc, _ := h.(map[string]any)
					if wc == nil || hc == nil || byName(hc) != byName(wc) {
						continue
					}
					in := owned.entry(byName, byName(wc))
					found = append(found, foreignEntries(wc["env"], hc["env"], byName, "env ", " in "+byName(wc), in.at("env"))...)
					found = append(found, foreignEntries(wc["ports"], hc["ports"], byPortProtocol("containerPort"), "port ", " in "+byName(wc), in.at("ports"))...)
				}
			}
			if len(found) > 0 {
				if wanted {
					setPath(patch, path, want)
				} else {
					setPath(patch, path, nil) // no such list desired: null removes it
				}
			}
			foreign = append(foreign, found...)
		}
	}
	if len(foreign) == 0 {
		return nil, nil
	}
	return patch, foreign
}

// revertList sets desired's list at path into patch when live's holds a foreign entry.
func revertList(desired, live, patch map[string]any, path []string, key listKey, what string, owned fieldSet) []string {
	want, _, _ := unstructured.NestedFieldNoCopy(desired, path...)
	have, _, _ := unstructured.NestedFieldNoCopy(live, path...)
	found := foreignEntries(want, have, key, what, "", owned)
	if len(found) > 0 && path[len(path)-1] != "containers" && path[len(path)-1] != "initContainers" {
		setPath(patch, path, want)
	}
	return found
}

// foreignEntries lists the entries of have whose key is not among want's and that the
// operator did not write itself: an entry it applied before and the spec has dropped since
// is removed by the apply (server-side apply removes what its manager stops setting), and is
// no edit by hand.
func foreignEntries(want, have any, key listKey, what, where string, owned fieldSet) []string {
	hs, _ := have.([]any)
	if len(hs) == 0 {
		return nil
	}
	ws, _ := want.([]any)
	keys := make(map[string]bool, len(ws))
	for _, w := range ws {
		if m, ok := w.(map[string]any); ok {
			keys[key(m)] = true
		}
	}
	var found []string
	for _, h := range hs {
		if m, ok := h.(map[string]any); ok && !keys[key(m)] && owned.entry(key, key(m)) == nil {
			found = append(found, what+key(m)+where)
		}
	}
	return found
}

// fieldSet is a node of managedFields' fieldsV1 ("f:name" for a field, "k:{...}" for a list
// entry by its keys), merged over the operator's own managers (its applies and patches).
type fieldSet map[string]any

// ownedFields is the union of the fields the operator's field manager owns in obj.
func ownedFields(obj *unstructured.Unstructured) fieldSet {
	out := fieldSet{}
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager != FieldOwner || mf.FieldsV1 == nil {
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
// desired's, foreign entries or not: the way out when an apply is refused as invalid because
// an entry of ours was edited by hand into something the apply cannot merge with (an env var
// from a Secret turned into a literal value gets both, which the API server refuses; so
// does a probe with another handler). nil for the kinds without such lists.
func replaceListsPatch(desired *unstructured.Unstructured) map[string]any {
	patch := map[string]any{}
	switch desired.GetKind() {
	case "Service":
		v, _, _ := unstructured.NestedFieldCopy(desired.Object, "spec", "ports")
		setPath(patch, []string{"spec", "ports"}, v)
	case "Deployment", "StatefulSet":
		for _, list := range []string{"containers", "initContainers"} {
			path := []string{"spec", "template", "spec", list}
			v, _, _ := unstructured.NestedFieldCopy(desired.Object, path...)
			setPath(patch, path, v) // absent: null removes it
		}
	default:
		return nil
	}
	return patch
}
