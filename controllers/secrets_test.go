package controllers

import (
	"fmt"
	"maps"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testDSNMismatchWarned: the database's pod sets its role's password from key password of
// NAME-postgres-credentials, and the runtime and the migration connect with key dsn. A user
// who rotates the password by editing only key password (kubectl apply of a new Secret, an
// external secrets tool that manages that key) leaves API pods that cannot connect at their
// next start. The generated Secret is never overwritten (the contract), so the operator says
// it: DatabaseReady (still True: the database is ready) carries a warning naming the Secret
// and the key, one Warning event tells it once, neither quotes a value, the Secret stays byte
// for byte as the user left it, and passes at rest write nothing. A dsn edited to match (with
// options of the user's own) clears the warning.
func testDSNMismatchWarned(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "dw"))
	makeReady(t, ns, "dw")
	reconcileDirectly(t, ns, "dw", 1)
	operatorWrites.settle(t, ns)
	const name = "dw-postgres-credentials"
	const warning = "the dsn in Secret " + name + " does not carry the password in its key password"

	secretWrites := func(mark int) []string {
		var out []string
		for _, w := range operatorWrites.since(mark, ns) {
			if strings.HasSuffix(w, "/secrets/"+name) {
				out = append(out, w)
			}
		}
		return out
	}
	mismatchEvents := func() []string {
		var out []string
		for _, e := range stackEvents(t, ns, "dw") {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "does not carry") {
				n := int32(1)
				if e.Series != nil {
					n = e.Series.Count
				}
				out = append(out, fmt.Sprintf("%s %q x%d", e.Reason, e.Note, n))
			}
		}
		return out
	}
	edit := func(k, v string) {
		t.Helper()
		sec := waitFor(t, &corev1.Secret{}, ns, name)
		sec.Data[k] = []byte(v)
		if err := k8s.Update(bg, sec); err != nil {
			t.Fatal(err)
		}
	}
	databaseReady := func() *metav1.Condition {
		t.Helper()
		return condition(getStack(t, ns, "dw"), tradingv1alpha1.ConditionDatabaseReady)
	}
	// connectsWith says which password the runtime's pgx takes from the dsn.
	connectsWith := func(dsn string) string {
		t.Helper()
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatalf("the dsn does not parse: %v", err)
		}
		return cfg.Password
	}

	before := waitFor(t, &corev1.Secret{}, ns, name)
	oldPassword := string(before.Data[postgresPasswordKey])
	if c := databaseReady(); strings.Contains(c.Message, "dsn") {
		t.Fatalf("DatabaseReady warns of a dsn as generated: %s", c.Message)
	}

	// Only the password is edited, to one with URL characters: the dsn keeps the old one.
	const rotated = "n3w/p@ss:w0rd?#%+ x"
	mark := operatorWrites.mark()
	edit(postgresPasswordKey, rotated)
	edited := waitFor(t, &corev1.Secret{}, ns, name)
	waitConditionSays(t, ns, "dw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable, warning)
	operatorWrites.settle(t, ns)
	now := waitFor(t, &corev1.Secret{}, ns, name)
	if !maps.EqualFunc(now.Data, edited.Data, func(a, b []byte) bool { return string(a) == string(b) }) || now.ResourceVersion != edited.ResourceVersion {
		t.Errorf("the operator changed the Secret the user edited (resourceVersion %s -> %s)", edited.ResourceVersion, now.ResourceVersion)
	}
	if w := secretWrites(mark); len(w) != 0 {
		t.Errorf("the operator wrote the Secret: %v", w)
	}
	if ev := mismatchEvents(); len(ev) != 1 || !strings.Contains(ev[0], name) || !strings.Contains(ev[0], "key password") {
		t.Errorf("warning events about the dsn: %v, want one naming Secret %s and key password", ev, name)
	}
	c := databaseReady()
	for _, said := range append(mismatchEvents(), c.Message) {
		for _, secret := range []string{"w0rd", oldPassword, url.QueryEscape(oldPassword), "sslmode"} {
			if strings.Contains(said, secret) {
				t.Errorf("%q shows the dsn or a password", said)
			}
		}
	}

	// At rest nothing is written, and no second event.
	mark = operatorWrites.mark()
	reconcileDirectly(t, ns, "dw", 3)
	if w := operatorWrites.since(mark, ns); len(w) != 0 {
		t.Errorf("passes at rest write while the dsn disagrees: %v", w)
	}
	if ev := mismatchEvents(); len(ev) != 1 {
		t.Errorf("warning events about the dsn after passes at rest: %v", ev)
	}
	// A status written for another reason (a new generation) while the dsn still disagrees
	// keeps the warning, and brings no second event.
	updateStack(t, ns, "dw", func(s *tradingv1alpha1.TradingStack) { s.Spec.Monitoring.ServiceMonitor.Interval = "1m" })
	eventually(t, "the new generation observed", func() error {
		if s := getStack(t, ns, "dw"); s.Status.ObservedGeneration != s.Generation {
			return fmt.Errorf("observed %d of %d", s.Status.ObservedGeneration, s.Generation)
		}
		return nil
	})
	waitConditionSays(t, ns, "dw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable, warning)
	operatorWrites.settle(t, ns)
	if ev := mismatchEvents(); len(ev) != 1 {
		t.Errorf("warning events about the dsn after another status write: %v", ev)
	}

	// The dsn edited to match, with options of the user's own: the warning goes.
	dsn := string(now.Data[postgresDSNKey])
	own := strings.Replace(dsn, url.UserPassword("trading", oldPassword).String(), url.UserPassword("trading", rotated).String(), 1)
	own = strings.Replace(own, "sslmode=disable", "sslmode=disable&application_name=mine&connect_timeout=5", 1)
	own = strings.Replace(own, "postgres://", "postgresql://", 1)
	if connectsWith(own) != rotated || !strings.Contains(own, "application_name") {
		t.Fatalf("the test's dsn does not carry the new password and options")
	}
	edit(postgresDSNKey, own)
	eventually(t, "DatabaseReady without the warning", func() error {
		if c := databaseReady(); c.Status != metav1.ConditionTrue || strings.Contains(c.Message, "dsn") {
			return fmt.Errorf("DatabaseReady is %s: %s", c.Status, c.Message)
		}
		return nil
	})
	passesWriteNothing(t, ns, "dw")
	if got := string(waitFor(t, &corev1.Secret{}, ns, name).Data[postgresDSNKey]); got != own {
		t.Error("the operator changed the user's dsn")
	}
	if ev := mismatchEvents(); len(ev) != 1 {
		t.Errorf("warning events about the dsn once it agrees: %v", ev)
	}

	// A Secret the user made is theirs to judge: its dsn may go through a pooler with other
	// credentials.
	ns2 := newNamespace(t)
	userDSN := "postgres://trading:via-a-pooler@dm-postgres." + ns2 + ".svc:5432/trading?sslmode=disable"
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns2, Name: "dm-postgres-credentials"},
		StringData: map[string]string{postgresUserKey: "trading", postgresPasswordKey: "pw-of-the-user", postgresDSNKey: userDSN}}); err != nil {
		t.Fatal(err)
	}
	createStack(t, newStack(ns2, "dm"))
	makeReady(t, ns2, "dm")
	if c := condition(getStack(t, ns2, "dm"), tradingv1alpha1.ConditionDatabaseReady); strings.Contains(c.Message, "dsn") {
		t.Errorf("DatabaseReady warns of the dsn of a Secret the user made: %s", c.Message)
	}
	operatorWrites.settle(t, ns2)
	for _, e := range stackEvents(t, ns2, "dm") {
		if strings.Contains(e.Note, "does not carry") {
			t.Errorf("an event warns of the dsn of a Secret the user made: %s %s", e.Reason, e.Note)
		}
	}
}

// TestDSNCredentials: the user and password the operator reads from a dsn are those the
// runtime's pgx connects with (pgconn.ParseConfig, which parses a URL as libpq does: the
// first '@' ends the userinfo, where net/url takes the last), and a dsn it cannot judge
// (keyword=value, one pgx refuses) is not judged.
func TestDSNCredentials(t *testing.T) {
	const awkward = "n3w/p@ss:w0rd?#%+ x"
	for _, tc := range []struct {
		name, dsn      string
		user, password string
		ok             bool
	}{
		{"as generated", postgresDSN(newStack("ns", "s"), "trading", "pw"), "trading", "pw", true},
		{"URL characters percent-encoded", postgresDSN(newStack("ns", "s"), "trading", awkward), "trading", awkward, true},
		{"lower-case percent-encoding", "postgres://trading:a%2fb%40c@h:5432/trading", "trading", "a/b@c", true},
		{"a raw '@' ends the userinfo at the first", "postgres://trading:p@ss@h:5432/trading", "trading", "p", true},
		{"a raw ':' in the password", "postgres://trading:a:b@h/trading", "trading", "a:b", true},
		{"a raw '+' is a '+'", "postgresql://trading:a+b@h/trading?sslmode=disable", "trading", "a+b", true},
		{"no password", "postgres://trading@h/trading", "trading", "", true},
		{"an empty password", "postgres://trading:@h/trading", "trading", "", true},
		{"no userinfo", "postgres://h:5432/trading", "", "", true},
		{"the query's password wins", "postgres://trading:old@h/trading?password=new%20pw&sslmode=disable", "trading", "new pw", true},
		{"the query's user and password", "postgres://h/trading?user=app&password=pw&application_name=mine", "app", "pw", true},
		{"the last of a repeated key", "postgres://trading@h/trading?password=a&password=b", "trading", "b", true},
		{"a '@' before any '/' ends the userinfo, even in the query, as in libpq", "postgres://h?password=a@h2/db", "h?password=a", "", true},
		{"a '@' after the path is the query's", "postgres://h/db?password=a@b", "", "a@b", true},
		{"multiple hosts", "postgres://trading:pw@h1:5432,h2:5433/trading?target_session_attrs=read-write", "trading", "pw", true},
		{"keyword=value is not judged", "host=h user=trading password=old dbname=trading", "", "", false},
		{"an interior space is refused by pgx", "postgres://trading:a b@h/trading", "", "", false},
		{"a bad percent-encoding is refused by pgx", "postgres://trading:100%@h/trading", "", "", false},
		{"a query pair without '=' is refused by pgx", "postgres://trading:pw@h/trading?sslmode", "", "", false},
		{"another scheme is not judged", "mysql://trading:old@h/trading", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, password, ok := dsnCredentials(tc.dsn)
			if ok != tc.ok || user != tc.user || password != tc.password {
				t.Errorf("got %q %q %v, want %q %q %v", user, password, ok, tc.user, tc.password, tc.ok)
			}
			cfg, err := pgconn.ParseConfig(tc.dsn)
			if !ok {
				if err == nil && strings.Contains(tc.dsn, "://") && !strings.HasPrefix(tc.dsn, "mysql") {
					t.Errorf("pgx parses a dsn the operator does not judge")
				}
				return
			}
			if err != nil {
				t.Fatalf("pgx refuses a dsn the operator judges: %v", err)
			}
			// Where the dsn names none, pgx takes the environment's (PGUSER, the OS user;
			// PGPASSWORD, a passfile): not the Secret's keys either.
			if user != "" && cfg.User != user {
				t.Errorf("pgx connects as user %q, the operator reads %q", cfg.User, user)
			}
			if password != "" && cfg.Password != password {
				t.Errorf("pgx connects with password %q, the operator reads %q", cfg.Password, password)
			}
		})
	}
}

// TestDSNMismatch: which keys the dsn of NAME-postgres-credentials does not carry, and the
// cases left alone: a key emptied (put back by the operator) or a dsn not judged.
func TestDSNMismatch(t *testing.T) {
	for _, tc := range []struct {
		name, user, password, dsn string
		want                      string
	}{
		{"agrees", "trading", "pw", "postgres://trading:pw@h:5432/trading?sslmode=disable", ""},
		{"agrees with options of the user's own", "trading", "a/b@c", "postgresql://trading:a%2Fb%40c@h:6432/trading?sslmode=require&application_name=mine", ""},
		{"agrees in the query", "trading", "a+b", "postgres://h/trading?user=trading&password=a+b", ""},
		{"password rotated alone", "trading", "new", "postgres://trading:old@h/trading?sslmode=disable", "password"},
		{"a raw '@' cuts the password", "trading", "p@ss", "postgres://trading:p@ss@h/trading", "password"},
		{"user and password", "app", "pw", "postgres://trading:old@h/trading", "user,password"},
		{"the user only", "app", "pw", "postgres://trading:pw@h/trading", "user"},
		{"no password in the dsn", "trading", "pw", "postgres://trading@h/trading", "password"},
		{"the query's old password wins over the userinfo's", "trading", "new", "postgres://trading:new@h/trading?password=old", "password"},
		{"keyword=value: not judged", "trading", "new", "host=h user=trading password=old", ""},
		{"a dsn pgx refuses: not judged", "trading", "new", "postgres://trading:o ld@h/trading", ""},
		{"password emptied: put back, not judged", "trading", "", "postgres://trading:old@h/trading", ""},
		{"no dsn: put back, not judged", "trading", "pw", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sec := &corev1.Secret{Data: map[string][]byte{postgresUserKey: []byte(tc.user), postgresPasswordKey: []byte(tc.password),
				postgresDSNKey: []byte(tc.dsn)}}
			if got := strings.Join(dsnMismatch(sec), ","); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s-postgres-credentials"}}
	for _, tc := range []struct {
		keys []string
		want string
	}{
		{[]string{postgresPasswordKey}, "; warning: the dsn in Secret s-postgres-credentials does not carry the password in its key password"},
		{[]string{postgresUserKey, postgresPasswordKey}, "; warning: the dsn in Secret s-postgres-credentials does not carry the user and password in its keys user and password"},
	} {
		if got := dsnWarning(sec, tc.keys); !strings.HasPrefix(got, tc.want) || !strings.HasSuffix(got, "edit them together") {
			t.Errorf("dsnWarning(%v) = %q, want it to start %q", tc.keys, got, tc.want)
		}
	}
}
