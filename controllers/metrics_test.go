package controllers

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"
)

// The manager's metrics as cmd/manager serves them by default (secure): HTTPS, HTTP/1.1 only,
// and only to a caller with a token the API server accepts who may get /metrics. The server
// runs as a user bound to config/rbac/metrics_auth_role.yaml alone (as the operator's service
// account is through metrics_auth_role_binding.yaml), and the scraper allowed is bound to
// config/rbac/metrics_reader_role.yaml, as the README tells Prometheus's to be.
func TestSecureMetrics(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	authRole := roleFromFile(t, "metrics_auth_role.yaml", "test-metrics-auth")
	serverCfg := userBoundTo(t, "trading-operator-metrics-under-test", authRole)
	reader := roleFromFile(t, "metrics_reader_role.yaml", "test-metrics-reader")

	ns := newNamespace(t)
	allowed, denied := saToken(t, ns, "prometheus"), saToken(t, ns, "some-pod")
	bindSA(t, ns, "prometheus", reader)

	addr := freeAddr(t)
	httpClient, err := rest.HTTPClientFor(serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := metricsserver.NewServer(MetricsOptions(addr, true, t.TempDir()), serverCfg, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	}()

	// The certificate is made up at start: the scraper does not verify it (the README says
	// how to give it one that can be verified). It asks for HTTP/2 and gets HTTP/1.1.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	scrape := func(token string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, err.Error(), ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Proto
	}
	eventually(t, "the metrics server answers", func() error {
		if code, body, _ := scrape(""); code == 0 {
			return fmt.Errorf("%s", body)
		}
		return nil
	})

	if code, body, _ := scrape(""); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d %.200s, want 401", code, body)
	}
	// controller-runtime's filter answers a token the API server refuses with 500
	// "Authentication failed" (and logs it as an error), not 401: refused either way.
	if code, body, _ := scrape("not-a-token"); code == http.StatusOK || strings.Contains(body, "# TYPE ") {
		t.Errorf("with a made-up token: %d %.200s, want refused", code, body)
	}
	if code, body, _ := scrape(denied); code != http.StatusForbidden {
		t.Errorf("a service account not allowed /metrics: %d %.200s, want 403", code, body)
	}
	// The binding was made just before: the API server's authorizer may take a moment to
	// see it.
	var proto string
	eventually(t, "the allowed scraper gets the metrics", func() error {
		code, body, p := scrape(allowed)
		if code != http.StatusOK || !strings.Contains(body, "# TYPE ") {
			return fmt.Errorf("%d %.200s, want 200 and metrics", code, body)
		}
		proto = p
		return nil
	})
	if proto != "HTTP/1.1" {
		t.Errorf("protocol %q, want HTTP/1.1 (HTTP/2 off)", proto)
	}
	// Plain HTTP on the port is refused, never answered with the metrics.
	resp, err := http.Get("http://" + addr + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP: %d %.200s", resp.StatusCode, b)
		}
	}
}

// readRBAC reads config/rbac/file into obj.
func readRBAC(t *testing.T, file string, obj client.Object) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", file))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, obj); err != nil {
		t.Fatal(err)
	}
}

// roleFromFile creates the ClusterRole of config/rbac/file under the name name.
func roleFromFile(t *testing.T, file, name string) *rbacv1.ClusterRole {
	t.Helper()
	role := &rbacv1.ClusterRole{}
	readRBAC(t, file, role)
	role.Name = name
	if err := k8s.Create(bg, role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, role) })
	return role
}

// userBoundTo is the config of a user bound to role and nothing else.
func userBoundTo(t *testing.T, user string, role *rbacv1.ClusterRole) *rest.Config {
	t.Helper()
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := k8s.Create(bg, binding); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, binding) })
	u, err := testEnv.AddUser(envtest.User{Name: user}, testCfg)
	if err != nil {
		t.Fatal(err)
	}
	return u.Config()
}

// saToken creates the ServiceAccount ns/name and returns a token of it.
func saToken(t *testing.T, ns, name string) string {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := k8s.Create(bg, sa); err != nil {
		t.Fatal(err)
	}
	tr := &authenticationv1.TokenRequest{}
	if err := k8s.SubResource("token").Create(bg, sa, tr); err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func bindSA(t *testing.T, ns, name string, role *rbacv1.ClusterRole) {
	t.Helper()
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}},
	}
	if err := k8s.Create(bg, binding); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(bg, binding) })
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
