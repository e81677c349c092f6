package controllers

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Leader election works with exactly the Role config/rbac grants for it (a Lease in the
// operator's namespace: get, create, update): a manager running as a user bound to it and
// to the operator's ClusterRole is elected, and releases the Lease when it stops.
func TestLeaderElectionWithItsRole(t *testing.T) {
	ns := newNamespace(t)
	role := &rbacv1.Role{}
	readRBAC(t, "leader_election_role.yaml", role)
	role.Namespace = ns
	if err := k8s.Create(bg, role); err != nil {
		t.Fatal(err)
	}
	const user = "trading-operator-leader-under-test"
	for _, binding := range []client.Object{
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		},
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "manager-role"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		},
	} {
		if err := k8s.Create(bg, binding); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user}}) })
	u, err := testEnv.AddUser(envtest.User{Name: user}, testCfg)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(u.Config(), manager.Options{
		Scheme:                        NewScheme(),
		Cache:                         CacheOptions([]string{ns}),
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		LeaderElection:                true,
		LeaderElectionID:              "trading-operator.trading.findmy.io",
		LeaderElectionNamespace:       ns,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 ptrDuration(15 * time.Second),
		RenewDeadline:                 ptrDuration(10 * time.Second),
		RetryPeriod:                   ptrDuration(200 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	select {
	case <-mgr.Elected():
	case err := <-done:
		cancel()
		t.Fatalf("manager stopped before it was elected: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("not elected within a minute with the leader election Role")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("manager: %v", err)
	}
	lease := &coordinationv1.Lease{}
	if err := k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: "trading-operator.trading.findmy.io"}, lease); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Errorf("the Lease is still held by %q after the manager stopped (not released)", *lease.Spec.HolderIdentity)
	}
}

func ptrDuration(d time.Duration) *time.Duration { return &d }
