package http_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	trading "github.com/findmy/trading-operator/runtime"
	rthttp "github.com/findmy/trading-operator/runtime/http"
	"github.com/findmy/trading-operator/runtime/jwt"
	"github.com/findmy/trading-operator/runtime/postgres"
	"github.com/findmy/trading-operator/runtime/redis"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

func TestLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.createUser("trader1", trading.RoleTrader)

	r := e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": e.passwords["trader1"]}).want(200)
	var raw map[string]any
	r.decode(&raw)
	if len(raw) != 4 || raw["token_type"] != "Bearer" || raw["expires_in"] != float64(3600) ||
		raw["access_token"] == "" || raw["refresh_token"] == "" || raw["access_token"] == raw["refresh_token"] {
		t.Fatalf("login body %s", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}

	// The access token is the JWT of the contract.
	var c struct {
		Name  string   `json:"name"`
		Roles []string `json:"roles"`
		gojwt.RegisteredClaims
	}
	tok, _, err := gojwt.NewParser().ParseUnverified(raw["access_token"].(string), &c)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["alg"] != "HS256" || tok.Header["kid"] != "k2" || c.Subject != id || c.Name != "trader1" ||
		len(c.Roles) != 1 || c.Roles[0] != "trader" || c.Issuer != issuer || len(c.Audience) != 1 || c.Audience[0] != audience ||
		c.IssuedAt == nil || c.ExpiresAt == nil || c.ExpiresAt.Sub(c.IssuedAt.Time) != time.Hour {
		t.Errorf("token header %v claims %+v", tok.Header, c)
	}

	// An unknown user and a wrong password get the same answer.
	wrongPw := e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": "wrong"})
	noUser := e.do("POST", "/api/auth/login", "", map[string]string{"username": "nobody", "password": "wrong"})
	wrongPw.problem(401)
	noUser.problem(401)
	if !bytes.Equal(wrongPw.body, noUser.body) {
		t.Errorf("bodies differ:\n%s\n%s", wrongPw.body, noUser.body)
	}
	// A password of another user, and the right password with another case of name.
	e.addUser("trader2", trading.RoleTrader)
	e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": e.passwords["trader2"]}).problem(401)

	f := e.do("POST", "/api/auth/login", "", map[string]string{}).fields()
	if f["username"] == "" || f["password"] == "" {
		t.Errorf("fields %v", f)
	}

	// A name no user can have (a NUL: text cannot hold it) is wrong credentials, not a 500.
	nul := e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1\u0000x", "password": "wrong"})
	nul.problem(401)
	if !bytes.Equal(nul.body, noUser.body) {
		t.Errorf("a NUL in the name answers otherwise:\n%s\n%s", nul.body, noUser.body)
	}
	// bcrypt reads 72 bytes: a user whose password is exactly that long is not let in with
	// anything appended to it.
	long := strings.Repeat("p", 72)
	hash, err := bcrypt.GenerateFromPassword([]byte(long), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool().Exec(context.Background(), `INSERT INTO users (username, password_hash, roles) VALUES ('long72', $1, '{trader}')`, string(hash)); err != nil {
		t.Fatal(err)
	}
	e.do("POST", "/api/auth/login", "", map[string]string{"username": "long72", "password": long}).want(200)
	e.do("POST", "/api/auth/login", "", map[string]string{"username": "long72", "password": long + "EXTRA"}).problem(401)
}

func TestMe(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.addUser("risk1", trading.RoleRisk)
	r := e.do("GET", "/api/auth/me", e.token("risk1"), nil).want(200)
	var me map[string]any
	r.decode(&me)
	roles, _ := me["roles"].([]any)
	if len(me) != 3 || me["id"] != id || me["username"] != "risk1" || len(roles) != 1 || roles[0] != "risk" {
		t.Errorf("me %s", r.body)
	}
	e.do("GET", "/api/auth/me", "", nil).problem(401)
}

// forge signs a token like the server's, with changes an attacker would try.
func forge(t *testing.T, method gojwt.SigningMethod, kid string, key any, sub string, mutate func(gojwt.MapClaims)) string {
	t.Helper()
	now := time.Now()
	c := gojwt.MapClaims{
		"sub": sub, "name": "trader1", "roles": []string{"admin"}, "token_use": "access",
		"iss": issuer, "aud": audience, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if mutate != nil {
		mutate(c)
	}
	tok := gojwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenAttacks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.addUser("trader1", trading.RoleTrader)
	pair := e.login("trader1")
	hs := gojwt.SigningMethodHS256

	// Control: a token forged with the real key passes, so every case below fails for the
	// one thing it changes.
	e.do("GET", "/api/auth/me", forge(t, hs, "k2", signingSecret, id, nil), nil).want(200)
	e.do("GET", "/api/auth/me", pair.AccessToken, nil).want(200)

	parts := strings.Split(pair.AccessToken, ".")
	for name, header := range map[string]string{
		"no header":            "",
		"empty bearer":         "Bearer ",
		"basic scheme":         "Basic dHJhZGVyMTpwYXNzd29yZA==",
		"token without scheme": pair.AccessToken,
		"alg none":             "Bearer " + forge(t, gojwt.SigningMethodNone, "k2", gojwt.UnsafeAllowNoneSignatureType, id, nil),
		"another key":          "Bearer " + forge(t, hs, "k2", otherSecret, id, nil),
		"unknown kid":          "Bearer " + forge(t, hs, "k9", signingSecret, id, nil),
		"no kid":               "Bearer " + forge(t, hs, "", signingSecret, id, nil),
		"HS512":                "Bearer " + forge(t, gojwt.SigningMethodHS512, "k2", signingSecret, id, nil),
		"expired": "Bearer " + forge(t, hs, "k2", signingSecret, id, func(c gojwt.MapClaims) {
			c["iat"], c["exp"] = time.Now().Add(-3*time.Hour).Unix(), time.Now().Add(-2*time.Hour).Unix()
		}),
		"no exp":          "Bearer " + forge(t, hs, "k2", signingSecret, id, func(c gojwt.MapClaims) { delete(c, "exp") }),
		"wrong audience":  "Bearer " + forge(t, hs, "k2", signingSecret, id, func(c gojwt.MapClaims) { c["aud"] = "other-api" }),
		"wrong issuer":    "Bearer " + forge(t, hs, "k2", signingSecret, id, func(c gojwt.MapClaims) { c["iss"] = "evil" }),
		"refresh use":     "Bearer " + forge(t, hs, "k2", signingSecret, id, func(c gojwt.MapClaims) { c["token_use"] = "refresh" }),
		"refresh token":   "Bearer " + pair.RefreshToken,
		"signature cut":   "Bearer " + parts[0] + "." + parts[1] + ".",
		"swapped payload": "Bearer " + parts[0] + "." + b64(`{"sub":"`+id+`","roles":["admin"],"token_use":"access","iss":"tradingd","aud":"trading-api","exp":9999999999,"iat":1}`) + "." + parts[2],
	} {
		t.Run(name, func(t *testing.T) {
			for _, path := range []string{"/api/auth/me", "/api/orders", "/api/positions"} {
				r := e.do("GET", path, "", nil, "Authorization", header)
				p := r.problem(401)
				if strings.Contains(p.Detail, "kid") || strings.Contains(p.Detail, "signature") {
					t.Errorf("detail %q helps the attacker", p.Detail)
				}
			}
		})
	}
	// An attacker's admin claim in a forged token never reached a service: nothing was created.
	var list struct{ Orders []order }
	e.do("GET", "/api/orders", pair.AccessToken, nil).want(200).decode(&list)
	if len(list.Orders) != 0 {
		t.Errorf("%d orders", len(list.Orders))
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestRefreshRotationAndReuse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	first := e.login("trader1")

	refresh := func(tok string) *response {
		return e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": tok})
	}
	var second rthttp.TokenPair
	refresh(first.RefreshToken).want(200).decode(&second)
	if second.RefreshToken == first.RefreshToken || second.TokenType != "Bearer" || second.ExpiresIn != 3600 || second.AccessToken == "" {
		t.Fatalf("refresh answer %+v", second)
	}
	e.do("GET", "/api/auth/me", second.AccessToken, nil).want(200)

	var third rthttp.TokenPair
	refresh(second.RefreshToken).want(200).decode(&third)

	// Reuse of a rotated token: 401, and the whole login is gone, the newest token included,
	// its access tokens too ("revokes every token of that login").
	e.do("GET", "/api/auth/me", third.AccessToken, nil).want(200)
	refresh(first.RefreshToken).problem(401)
	refresh(third.RefreshToken).problem(401)
	refresh(second.RefreshToken).problem(401)
	for i, access := range []string{first.AccessToken, second.AccessToken, third.AccessToken} {
		if p := e.do("GET", "/api/auth/me", access, nil).problem(401); !strings.Contains(p.Detail, "ended") {
			t.Errorf("access token %d of the revoked login: %q", i+1, p.Detail)
		}
	}

	// Another login of the same user is untouched.
	other := e.login("trader1")
	refresh(other.RefreshToken).want(200)
	e.do("GET", "/api/auth/me", other.AccessToken, nil).want(200)

	refresh("never-issued").problem(401)
	refresh(first.AccessToken).problem(401) // an access token is not a refresh token
	if f := e.do("POST", "/api/auth/refresh", "", map[string]string{}).fields(); f["refresh_token"] == "" {
		t.Errorf("fields %v", f)
	}
}

func TestConcurrentRefreshOneWinner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	pair := e.login("trader1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken})
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] > 1 || codes[200]+codes[401] != 6 {
		t.Errorf("statuses %v: at most one refresh of one token may succeed", codes)
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	a := e.login("trader1")
	b := e.login("trader1")

	r := e.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": a.RefreshToken})
	r.want(http.StatusNoContent)
	if len(r.body) != 0 {
		t.Errorf("204 with a body %q", r.body)
	}
	checkSecurityHeaders(t, "logout", r.header)
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": a.RefreshToken}).problem(401)
	// The login's access token ends with it; the other login's lives on.
	e.do("GET", "/api/auth/me", a.AccessToken, nil).problem(401)
	e.do("GET", "/api/auth/me", b.AccessToken, nil).want(200)

	// A rotated chain: logging out with the newest token ends the login.
	var b2 rthttp.TokenPair
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": b.RefreshToken}).want(200).decode(&b2)
	e.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": b2.RefreshToken}).want(204)
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": b2.RefreshToken}).problem(401)

	// Unknown token: still 204 (nothing to tell an attacker).
	e.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": "unknown"}).want(204)
	e.do("POST", "/api/auth/logout", "", "{}").problem(422)
	e.do("POST", "/api/auth/logout", "", "nope").problem(400)
}

// TestEndedLoginsPruned: deleting the logins that ended long ago (postgres.SessionPruner)
// changes no answer of api.md's: their tokens are refused and logged out as before, a login
// in use keeps working, and presenting its month-old rotated token is still reuse that ends
// it; logout works as before.
func TestEndedLoginsPruned(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	ctx := context.Background()
	refresh := func(tok string) *response {
		return e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": tok})
	}
	logout := func(tok string) *response {
		return e.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": tok})
	}
	exec := func(sql string, tok string) {
		t.Helper()
		if _, err := e.db.Pool().Exec(ctx, sql, jwt.HashRefreshToken(tok)); err != nil {
			t.Fatal(err)
		}
	}
	var live2, live3, gone2 rthttp.TokenPair
	live := e.login("trader1")
	refresh(live.RefreshToken).want(200).decode(&live2)
	refresh(live2.RefreshToken).want(200).decode(&live3)
	exec(`UPDATE refresh_tokens SET expires_at = now() - interval '40 days' WHERE token_hash = $1`, live.RefreshToken)
	out := e.login("trader1")
	logout(out.RefreshToken).want(204)
	exec(`UPDATE sessions SET revoked_at = now() - interval '3 hours'
		WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1)`, out.RefreshToken)
	gone := e.login("trader1")
	refresh(gone.RefreshToken).want(200).decode(&gone2)
	exec(`UPDATE refresh_tokens SET expires_at = now() - interval '3 hours'
		WHERE session_id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1)`, gone.RefreshToken)

	// Its refresh token expired a minute ago; the access token issued with it has most of
	// its hour left, and works until then.
	recent := e.login("trader1")
	exec(`UPDATE refresh_tokens SET expires_at = now() - interval '1 minute' WHERE token_hash = $1`, recent.RefreshToken)

	r, err := postgres.NewSessionPruner(e.db, time.Hour, nil).Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Revoked != 1 || r.Expired != 1 {
		t.Errorf("pruned %+v; want the logged-out and the expired login", r)
	}

	e.do("GET", "/api/auth/me", live3.AccessToken, nil).want(200)
	e.do("GET", "/api/auth/me", recent.AccessToken, nil).want(200)
	refresh(recent.RefreshToken).problem(401)
	for _, tok := range []string{out.RefreshToken, gone.RefreshToken, gone2.RefreshToken} {
		refresh(tok).problem(401)
		logout(tok).want(204)
	}
	// Reuse of the live login's first token, rotated a month ago: 401, and the login ends.
	refresh(live.RefreshToken).problem(401)
	refresh(live3.RefreshToken).problem(401)
	e.do("GET", "/api/auth/me", live3.AccessToken, nil).problem(401)
	// Logout of a new login.
	next := e.login("trader1")
	logout(next.RefreshToken).want(204)
	refresh(next.RefreshToken).problem(401)
	e.do("GET", "/api/auth/me", next.AccessToken, nil).problem(401)
}

// The access log has method, route pattern, status, duration and request id, and never a
// token or a password.
func TestLogs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.addUser("trader1", trading.RoleTrader)
	e.addUser("risk1", trading.RoleRisk)
	pair := e.login("trader1")
	var next rthttp.TokenPair
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken}).want(200).decode(&next)
	o := e.submit(next.AccessToken, "BTC/USD", "buy", "1", "10")
	e.do("POST", "/api/orders/"+o.ID+"/approve", e.token("risk1"), nil, "X-Request-ID", "log-check-1").want(200)
	e.do("POST", "/api/auth/login", "", map[string]string{"username": "trader1", "password": "a-wrong-password"}).want(401)
	e.do("GET", "/api/orders", "", nil, "Authorization", "Bearer "+next.AccessToken+"x").want(401)

	logs := e.logs.String()
	for _, secret := range []string{pair.AccessToken, pair.RefreshToken, next.AccessToken, next.RefreshToken, e.passwords["trader1"], "a-wrong-password", e.passwords["risk1"]} {
		if strings.Contains(logs, secret) {
			t.Fatalf("the log contains a secret %q", secret)
		}
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if l["request_id"] == "log-check-1" && l["msg"] == "request" {
			found = true
			if l["method"] != "POST" || l["route"] != "POST /api/orders/{id}/approve" || l["status"] != float64(200) || l["duration"] == nil {
				t.Errorf("access log line %v", l)
			}
			if l["user_id"] == id {
				t.Errorf("approve logged as the requester, not the approver")
			}
			if l["client_ip"] != "127.0.0.1" {
				t.Errorf("access log line names client %v, want the TCP peer 127.0.0.1", l["client_ip"])
			}
		}
	}
	if !found {
		t.Errorf("no access log line for the approve:\n%s", logs)
	}
	if strings.Contains(logs, o.ID) && !strings.Contains(logs, "{id}") {
		t.Errorf("the raw path was logged instead of the route pattern")
	}
}

// Refresh tokens are stored only as hashes and passwords never in clear: no row of any
// table contains either.
func TestSecretsAtRest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addUser("trader1", trading.RoleTrader)
	first := e.login("trader1")
	var second rthttp.TokenPair
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": first.RefreshToken}).want(200).decode(&second)

	ctx := context.Background()
	rows, err := e.db.Pool().Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	rowsSeen := 0
	for _, table := range tables {
		dump, err := e.db.Pool().Query(ctx, `SELECT row_to_json(t)::text FROM `+pgx.Identifier{table}.Sanitize()+` t`)
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(dump, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range texts {
			rowsSeen++
			for name, secret := range map[string]string{
				"first refresh token": first.RefreshToken, "second refresh token": second.RefreshToken,
				"password": e.passwords["trader1"], "access token": second.AccessToken,
			} {
				if strings.Contains(row, secret) {
					t.Errorf("table %s stores the %s in clear: %s", table, name, row)
				}
			}
		}
	}
	if rowsSeen < 3 {
		t.Fatalf("only %d rows in %v: the check looked at nothing", rowsSeen, tables)
	}
}

// A refresh token lives REFRESH_TOKEN_TTL (30 days by default) and not longer.
func TestRefreshTokenExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *envOptions) { o.refreshTTL = 50 * time.Millisecond })
	e.addUser("trader1", trading.RoleTrader)
	pair := e.login("trader1")
	time.Sleep(100 * time.Millisecond) // past its expiry, whatever the speed of the machine
	e.do("POST", "/api/auth/refresh", "", map[string]string{"refresh_token": pair.RefreshToken}).problem(401)

	// With the default, the stored expiry is 30 days ahead.
	d := newEnv(t)
	d.addUser("trader1", trading.RoleTrader)
	before := time.Now()
	d.login("trader1")
	var expires time.Time
	if err := d.db.Pool().QueryRow(context.Background(),
		`SELECT max(expires_at) FROM refresh_tokens`).Scan(&expires); err != nil {
		t.Fatalf("read refresh token expiry: %v", err)
	}
	if got := expires.Sub(before); got < 719*time.Hour || got > 721*time.Hour {
		t.Errorf("refresh token expires in %v, want 720h", got)
	}
}

// A login ended on one replica ends its access tokens on another within the session check's
// period (here: two servers on one database, as two replicas).
func TestEndedLoginOnAnotherReplica(t *testing.T) {
	t.Parallel()
	a := newEnv(t)
	b := newEnvOn(t, a.db, envOptions{})
	a.addUser("trader1", trading.RoleTrader)
	pair := a.login("trader1")
	b.do("GET", "/api/auth/me", pair.AccessToken, nil).want(200) // b now remembers the login as active
	a.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": pair.RefreshToken}).want(204)
	a.do("GET", "/api/auth/me", pair.AccessToken, nil).problem(401) // at once where it ended
	deadline := time.Now().Add(3 * rthttp.SessionCheckTTL)
	for b.do("GET", "/api/auth/me", pair.AccessToken, nil).status != 401 {
		if time.Now().After(deadline) {
			t.Fatalf("the other replica still accepts the access token of an ended login after %v", 3*rthttp.SessionCheckTTL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With Redis, a login ended on one replica is refused by the others before the logout
// answers, not a check period later.
func TestEndedLoginAnnouncedToReplicas(t *testing.T) {
	t.Parallel()
	url, prefix := redistest.SharedURL(t), redistest.Prefix(t)
	replica := func() *redis.Client {
		rc, err := redis.OpenWith(url, redis.Options{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rc.Close() })
		return rc
	}
	ra, rb := replica(), replica()
	a := newEnv(t, func(o *envOptions) { o.sessionEvents = ra })
	b := newEnvOn(t, a.db, envOptions{sessionEvents: rb})
	var subscribed atomic.Int32
	for _, rc := range []*redis.Client{ra, rb} {
		stop := rc.SubscribeInvalidations(func() { subscribed.Add(1) }, func() {}, func(uuid.UUID, trading.Views, string) {})
		t.Cleanup(stop)
	}
	redistest.Eventually(t, 5*time.Second, "both subscriptions", func() bool { return subscribed.Load() >= 2 })

	a.addUser("trader1", trading.RoleTrader)
	pair := a.login("trader1")
	b.do("GET", "/api/auth/me", pair.AccessToken, nil).want(200) // b remembers the login as active
	a.do("POST", "/api/auth/logout", "", map[string]string{"refresh_token": pair.RefreshToken}).want(204)
	b.do("GET", "/api/auth/me", pair.AccessToken, nil).problem(401) // at once
}
