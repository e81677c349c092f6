package controllers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/rand"
)

// The database's postStart hook really sets the role's password from the environment,
// whatever characters it holds, on a real PostgreSQL reached over its local socket as in
// the image (whose socket connections are trusted, like this machine's). Skipped when the
// machine's server has no socket at /var/run/postgresql (a throwaway instance elsewhere).
func TestSyncPasswordHook(t *testing.T) {
	const socketDir = "/var/run/postgresql"
	if _, err := os.Stat(filepath.Join(socketDir, ".s.PGSQL.5432")); err != nil {
		t.Skipf("no PostgreSQL socket in %s: %v", socketDir, err)
	}
	psql := func(sql string) string {
		t.Helper()
		out, err := exec.Command("psql", "-X", "-At", "-h", socketDir, "-U", "postgres", "-d", "postgres", "-c", sql).CombinedOutput()
		if err != nil {
			t.Fatalf("psql %q: %v: %s", sql, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	role := "pwsync_" + rand.String(8)
	psql(`CREATE ROLE "` + role + `" LOGIN`)
	t.Cleanup(func() { psql(`DROP ROLE IF EXISTS "` + role + `"`) })

	marker := filepath.Join(t.TempDir(), "injected")
	password := `it's a "quoted" $(touch ` + marker + `) ; DROP ROLE x; --`
	hook := exec.CommandContext(context.Background(), syncPassword[0], syncPassword[1:]...)
	hook.Env = append(os.Environ(), "POSTGRES_USER="+role, "POSTGRES_PASSWORD="+password)
	if out, err := hook.CombinedOutput(); err != nil {
		t.Fatalf("hook failed the container: %v: %s", err, out)
	}
	if got := psql(`SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '` + role + `'`); got != "t" {
		t.Fatalf("the role has no SCRAM password after the hook (%q)", got)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the password was run by the shell")
	}

	// A role that does not exist (a misconfigured Secret) does not fail the container.
	hook = exec.Command(syncPassword[0], syncPassword[1:]...)
	hook.Env = append(os.Environ(), "POSTGRES_USER=no_such_role_"+rand.String(6), "POSTGRES_PASSWORD=x")
	if out, err := hook.CombinedOutput(); err != nil {
		t.Fatalf("hook with an unknown role: %v: %s", err, out)
	}
}
