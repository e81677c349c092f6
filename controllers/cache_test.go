package controllers

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testUnusedRedisFieldsWarned: spec.redis.address written without mode external (the likeliest
// slip: the mode defaults to managed) deploys a managed Redis, and CacheReady said only that it
// is available, so the user believed the stack used theirs. CacheReady's message now ends with
// a warning naming the fields the mode does not use, with one Warning event when it appears or
// changes and none at rest; it clears when they are removed. The disabled mode warns of
// resources likewise.
func testUnusedRedisFieldsWarned(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "uf", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Address = "my-redis:6379"
	}))
	makeReady(t, ns, "uf")
	reconcileDirectly(t, ns, "uf", 1)
	operatorWrites.settle(t, ns)

	unusedEvents := func(ns, name string) []string {
		t.Helper()
		var out []string
		for _, e := range stackEvents(t, ns, name) {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "not used") {
				n := int32(1)
				if e.Series != nil {
					n = e.Series.Count
				}
				out = append(out, fmt.Sprintf("%s %q x%d", e.Reason, e.Note, n))
			}
		}
		return out
	}
	endsWith := func(ns, name, reason, warning string) {
		t.Helper()
		s := waitConditionSays(t, ns, name, tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, reason, warning)
		if c := condition(s, tradingv1alpha1.ConditionCacheReady); !strings.HasSuffix(c.Message, "; warning: "+warning) {
			t.Errorf("CacheReady's message does not end with the warning: %s", c.Message)
		}
	}

	const addressUnused = "spec.redis.address is not used: spec.redis.mode is managed"
	endsWith(ns, "uf", tradingv1alpha1.ReasonCacheAvailable, addressUnused)
	if c := condition(getStack(t, ns, "uf"), tradingv1alpha1.ConditionCacheReady); !strings.HasPrefix(c.Message, "Deployment uf-redis is available") {
		t.Errorf("CacheReady no longer says the managed Redis is available: %s", c.Message)
	}
	if ev := unusedEvents(ns, "uf"); len(ev) != 1 || !strings.HasPrefix(ev[0], "UnusedFields ") || !strings.Contains(ev[0], addressUnused) {
		t.Errorf("warning events about unused fields: %v, want one UnusedFields saying %q", ev, addressUnused)
	}
	// At rest nothing is written, and no second event.
	passesWriteNothing(t, ns, "uf")
	if ev := unusedEvents(ns, "uf"); len(ev) != 1 {
		t.Errorf("warning events about unused fields after passes at rest: %v", ev)
	}

	// Another unused field: the warning names both, in the spec's order, and is announced again.
	updateStack(t, ns, "uf", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.PasswordSecretRef = &tradingv1alpha1.SecretKeyReference{Name: "my-redis", Key: "password"}
	})
	const bothUnused = "spec.redis.address and spec.redis.passwordSecretRef are not used: spec.redis.mode is managed"
	endsWith(ns, "uf", tradingv1alpha1.ReasonCacheAvailable, bothUnused)
	operatorWrites.settle(t, ns)
	if ev := unusedEvents(ns, "uf"); len(ev) != 2 || !strings.Contains(strings.Join(ev, "\n"), bothUnused) {
		t.Errorf("warning events about unused fields once a second one is set: %v, want a second saying %q", ev, bothUnused)
	}

	// Removed: the warning goes, with no event.
	updateStack(t, ns, "uf", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Address = ""
		s.Spec.Redis.PasswordSecretRef = nil
	})
	eventually(t, "CacheReady without the warning", func() error {
		s := getStack(t, ns, "uf")
		c := condition(s, tradingv1alpha1.ConditionCacheReady)
		if c.ObservedGeneration != s.Generation || c.Status != metav1.ConditionTrue || strings.Contains(c.Message, "warning") {
			return fmt.Errorf("CacheReady is %s (generation %d of %d): %s", c.Status, c.ObservedGeneration, s.Generation, c.Message)
		}
		return nil
	})
	passesWriteNothing(t, ns, "uf")
	if ev := unusedEvents(ns, "uf"); len(ev) != 2 {
		t.Errorf("warning events about unused fields once they are removed: %v", ev)
	}

	// Disabled, with resources for a Redis that is not run.
	ns2 := newNamespace(t)
	createStack(t, newStack(ns2, "ud", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled
		s.Spec.Redis.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}
	}))
	endsWith(ns2, "ud", tradingv1alpha1.ReasonCacheDisabled, "spec.redis.resources is not used: spec.redis.mode is disabled")
	operatorWrites.settle(t, ns2)
	if ev := unusedEvents(ns2, "ud"); len(ev) != 1 || !strings.HasPrefix(ev[0], "UnusedFields ") {
		t.Errorf("warning events about unused fields of a disabled Redis: %v, want one UnusedFields", ev)
	}
}

// TestUnusedRedisFields: each mode names the set fields it does not use, in the spec's order;
// the image (always defaulted) and the fields the mode uses are never named.
func TestUnusedRedisFields(t *testing.T) {
	limits := corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
	ref := &tradingv1alpha1.SecretKeyReference{Name: "my-redis", Key: "password"}
	all := tradingv1alpha1.RedisSpec{Image: "redis:7", Resources: limits, Address: "my-redis:6379", PasswordSecretRef: ref}
	for _, tc := range []struct {
		mode tradingv1alpha1.RedisMode
		spec tradingv1alpha1.RedisSpec
		want string
	}{
		{tradingv1alpha1.RedisManaged, tradingv1alpha1.RedisSpec{Image: "redis:7", Resources: limits}, ""},
		{tradingv1alpha1.RedisManaged, all, "; warning: spec.redis.address and spec.redis.passwordSecretRef are not used: spec.redis.mode is managed"},
		{tradingv1alpha1.RedisExternal, tradingv1alpha1.RedisSpec{Image: "redis:7", Address: "my-redis:6379", PasswordSecretRef: ref, TLS: &tradingv1alpha1.RedisTLS{Enabled: true}}, ""},
		{tradingv1alpha1.RedisExternal, all, "; warning: spec.redis.resources is not used: spec.redis.mode is external"},
		{tradingv1alpha1.RedisExternal, tradingv1alpha1.RedisSpec{Address: "r:1", Resources: corev1.ResourceRequirements{Requests: limits.Limits}}, "; warning: spec.redis.resources is not used: spec.redis.mode is external"},
		{tradingv1alpha1.RedisDisabled, tradingv1alpha1.RedisSpec{Image: "redis:7"}, ""},
		{tradingv1alpha1.RedisDisabled, all, "; warning: spec.redis.resources, spec.redis.address and spec.redis.passwordSecretRef are not used: spec.redis.mode is disabled"},
	} {
		if got := unusedRedisFields(&tc.spec, tc.mode); got != tc.want {
			t.Errorf("%s %+v:\n got %q\nwant %q", tc.mode, tc.spec, got, tc.want)
		}
	}
}
