package postgres_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
)

// accessTTL is the access-token lifetime the pruners of these tests are given: a login goes
// once it ended more than accessTTL plus the margin (an hour) ago.
const accessTTL = time.Hour

func (e *env) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.db.Pool().Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// expireToken ages the refresh token with hash h: it expired ago before now.
func (e *env) expireToken(t testing.TB, h []byte, ago time.Duration) {
	t.Helper()
	e.exec(t, `UPDATE refresh_tokens SET created_at = now() - $2::bigint * interval '1 microsecond' - interval '30 days',
		expires_at = now() - $2::bigint * interval '1 microsecond' WHERE token_hash = $1`, h, ago.Microseconds())
}

func (e *env) revokedAgo(t testing.TB, sid uuid.UUID, ago time.Duration) {
	t.Helper()
	e.exec(t, `UPDATE sessions SET revoked_at = now() - $2::bigint * interval '1 microsecond' WHERE id = $1`, sid, ago.Microseconds())
}

func quietPruner(db *postgres.DB) *postgres.SessionPruner {
	return postgres.NewSessionPruner(db, accessTTL, slog.New(slog.DiscardHandler))
}

// TestPruneEndedSessions: the logins that ended more than the access-token lifetime plus the
// margin ago go with every token; the others stay whole, and refresh, reuse detection and
// logout answer afterwards as api.md says.
func TestPruneEndedSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	ctx := context.Background()
	exp := time.Now().Add(30 * 24 * time.Hour)
	h := func(s string) []byte { return []byte("hash-" + s) }
	login := func(first string) uuid.UUID {
		t.Helper()
		sid, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, h(first), exp)
		if err != nil {
			t.Fatal(err)
		}
		return sid
	}
	rotate := func(from, to string) {
		t.Helper()
		if _, _, err := e.sessions.RotateRefreshToken(ctx, h(from), h(to), exp); err != nil {
			t.Fatalf("rotate %s -> %s: %v", from, to, err)
		}
	}

	// In use for longer than a refresh token lives: its first rotated tokens expired long
	// ago, and must stay (presenting one is reuse).
	live := login("live1")
	rotate("live1", "live2")
	rotate("live2", "live3")
	e.expireToken(t, h("live1"), 40*24*time.Hour)
	e.expireToken(t, h("live2"), 10*24*time.Hour)
	// Logged out a minute ago: its access tokens are refused, but a replica that missed
	// the announcement learns it from this row for a few seconds more.
	recentLogout := login("recent1")
	if _, err := e.sessions.RevokeSession(ctx, h("recent1")); err != nil {
		t.Fatal(err)
	}
	// Its current refresh token expired half an hour ago: the access token issued with it
	// may be valid for up to half an hour more, and reuse of its rotated token still ends it.
	recentExpiry := login("soon1")
	rotate("soon1", "soon2")
	e.expireToken(t, h("soon1"), 2*time.Hour)
	e.expireToken(t, h("soon2"), 30*time.Minute)
	// Ended more than the horizon (1h access tokens + 1h margin) ago.
	oldLogout := login("old1")
	rotate("old1", "old2")
	e.revokedAgo(t, oldLogout, 2*time.Hour+time.Minute)
	oldExpiry := login("exp1")
	rotate("exp1", "exp2")
	rotate("exp2", "exp3")
	for _, tok := range []string{"exp1", "exp2", "exp3"} {
		e.expireToken(t, h(tok), 3*time.Hour)
	}
	// Its current token expired long ago while a rotated one has not (REFRESH_TOKEN_TTL was
	// lowered): nothing refreshes it, and its last access token expired with the horizon.
	shortened := login("short1")
	rotate("short1", "short2")
	e.expireToken(t, h("short2"), 3*time.Hour)

	r, err := quietPruner(e.db).Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Revoked != 1 || r.Expired != 2 || r.Tokens != 2+3+2 {
		t.Errorf("pruned %+v, want 1 revoked and 2 expired logins with 7 tokens", r)
	}
	for _, c := range []struct {
		name   string
		sid    uuid.UUID
		tokens int
	}{
		{"live", live, 3}, {"logged out a minute ago", recentLogout, 1}, {"expired half an hour ago", recentExpiry, 2},
		{"logged out hours ago", oldLogout, 0}, {"expired hours ago", oldExpiry, 0}, {"shortened", shortened, 0},
	} {
		sessions := e.count(t, `SELECT count(*) FROM sessions WHERE id = $1`, c.sid)
		tokens := e.count(t, `SELECT count(*) FROM refresh_tokens WHERE session_id = $1`, c.sid)
		if want := min(c.tokens, 1); sessions != want || tokens != c.tokens {
			t.Errorf("%s: %d session rows and %d tokens left, want %d and %d", c.name, sessions, tokens, want, c.tokens)
		}
	}

	// The pruned logins answer as ended ones did: refused, not reuse (nothing left to end).
	for _, tok := range []string{"old1", "old2", "exp2", "exp3", "short1"} {
		_, sid, err := e.sessions.RotateRefreshToken(ctx, h(tok), h(tok+"-next"), exp)
		wantCode(t, err, trading.EUNAUTHORIZED)
		if sid != uuid.Nil {
			t.Errorf("refresh with %s named login %v", tok, sid)
		}
	}
	for _, sid := range []uuid.UUID{oldLogout, oldExpiry, shortened} {
		if e.sessionActive(t, sid) {
			t.Errorf("pruned login %v is active", sid)
		}
	}
	if sid, err := e.sessions.RevokeSession(ctx, h("exp3")); err != nil || sid != uuid.Nil {
		t.Errorf("logout with a pruned login's token = %v, %v; want nothing, no error", sid, err)
	}
	if e.sessionActive(t, recentLogout) {
		t.Error("the login logged out a minute ago is active")
	}
	if !e.sessionActive(t, recentExpiry) {
		t.Error("the login whose token expired half an hour ago was revoked")
	}

	// Reuse detection on the live login, with its oldest rotated token: the login ends,
	// its current token stops working.
	_, sid, err := e.sessions.RotateRefreshToken(ctx, h("live1"), h("live-x"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	if sid != live || e.sessionActive(t, live) {
		t.Fatalf("reuse of a month-old rotated token after pruning named %v (active %v), want %v ended", sid, e.sessionActive(t, live), live)
	}
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("live3"), h("live4"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)
	// And on the login whose token expired half an hour ago: it still ends it.
	if _, sid, _ := e.sessions.RotateRefreshToken(ctx, h("soon1"), h("soon-x"), exp); sid != recentExpiry || e.sessionActive(t, recentExpiry) {
		t.Errorf("reuse on the login that expired half an hour ago named %v, want %v ended", sid, recentExpiry)
	}
	// Logout of a login made after the prune.
	fresh := login("fresh1")
	rotate("fresh1", "fresh2")
	if sid, err := e.sessions.RevokeSession(ctx, h("fresh2")); err != nil || sid != fresh || e.sessionActive(t, fresh) {
		t.Fatalf("logout = %v, %v; want %v ended", sid, err, fresh)
	}
	_, _, err = e.sessions.RotateRefreshToken(ctx, h("fresh2"), h("fresh3"), exp)
	wantCode(t, err, trading.EUNAUTHORIZED)

	// Nothing more to do: a round finds nothing.
	if r, err := quietPruner(e.db).Prune(ctx); err != nil || r != (postgres.PruneResult{}) {
		t.Errorf("second round = %+v, %v; want nothing pruned", r, err)
	}
}

// seedLogins inserts n logins of user: each with rotated tokens used and one current token;
// dead ones ended hours ago (every second one revoked, the others expired).
func (e *env) seedLogins(t testing.TB, user uuid.UUID, n, rotated int, dead bool) {
	t.Helper()
	revoked, expires := `NULL::timestamptz`, `now() + interval '30 days'`
	if dead {
		revoked = `CASE WHEN g % 2 = 0 THEN now() - interval '3 hours' END`
		expires = `now() - interval '3 hours'`
	}
	e.exec(t, `
		WITH s AS (
			INSERT INTO sessions (user_id, revoked_at, created_at)
			SELECT $1, `+revoked+`, now() - interval '31 days' FROM generate_series(1, $2) g
			RETURNING id)
		INSERT INTO refresh_tokens (token_hash, session_id, expires_at, used_at)
		SELECT gen_random_uuid()::text::bytea, s.id, `+expires+` - (r * interval '1 hour'),
			CASE WHEN r > 0 THEN now() - interval '31 days' END
		FROM s, generate_series(0, $3) r`, user, n, rotated)
}

// TestPruneBacklogInBatches: a backlog goes in many bounded batches (a login with more
// rotated tokens than a batch takes over several), and the live logins stay whole.
func TestPruneBacklogInBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	e.seedLogins(t, e.trader1.ID, 3000, 2, true)
	e.seedLogins(t, e.trader2.ID, 1, 120, true)
	e.seedLogins(t, e.trader1.ID, 50, 3, false)
	liveTokens := e.count(t, `SELECT count(*) FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE s.revoked_at IS NULL AND t.used_at IS NULL AND t.expires_at > now()`)
	if liveTokens != 50 {
		t.Fatalf("seeded %d live logins, want 50", liveTokens)
	}

	p := quietPruner(e.db)
	p.SetBatch(100, 50)
	r, err := p.Prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Revoked+r.Expired != 3001 || r.Tokens != 3000*3+121 {
		t.Errorf("pruned %+v, want 3001 logins and %d tokens", r, 3000*3+121)
	}
	// 3000 logins of 3 tokens at 100 logins and 50 tokens a batch: each 100 logins take 4
	// batches for their 200 rotated tokens, then one more with them.
	if r.Batches < 3000/100*4 {
		t.Errorf("%d batches, want at least 120 of at most 100 logins and 50 tokens", r.Batches)
	}
	if n := e.count(t, `SELECT count(*) FROM sessions`); n != 50 {
		t.Errorf("%d sessions left, want the 50 live ones", n)
	}
	if n := e.count(t, `SELECT count(*) FROM refresh_tokens`); n != 50*4 {
		t.Errorf("%d refresh tokens left, want the live logins' 200", n)
	}
}

// TestPruneReplicasTogether: replicas pruning at once delete each login once, without errors.
func TestPruneReplicasTogether(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	e.seedLogins(t, e.trader1.ID, 2000, 1, true)
	var (
		mu    sync.Mutex
		total postgres.PruneResult
		wg    sync.WaitGroup
	)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := quietPruner(e.db)
			p.SetBatch(50, 1000)
			// A replica that finds another at work ends its round; run until nothing is left.
			for e.count(t, `SELECT count(*) FROM sessions`) > 0 {
				r, err := p.Prune(context.Background())
				if err != nil {
					t.Errorf("prune: %v", err)
					return
				}
				if r == (postgres.PruneResult{}) {
					time.Sleep(time.Millisecond) // another replica is at work
				}
				mu.Lock()
				total.Revoked += r.Revoked
				total.Expired += r.Expired
				total.Tokens += r.Tokens
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if total.Revoked+total.Expired != 2000 || total.Tokens != 4000 {
		t.Errorf("replicas together pruned %+v, want 2000 logins and 4000 tokens, each once", total)
	}
}

// TestPruneRunStopsWithContext: Run prunes at once, then stops when its context ends.
func TestPruneRunStopsWithContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	e.seedLogins(t, e.trader1.ID, 10, 1, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); quietPruner(e.db).Run(ctx, time.Hour) }()
	for e.count(t, `SELECT count(*) FROM sessions`) > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestPruneStoppedSaysWhatItDeleted: a round stopped (SIGTERM) after some batches still logs
// the logins it deleted. It said nothing: on a restart during the first round after an
// upgrade (the whole backlog, tens of seconds), thousands of logins went without a line.
func TestPruneStoppedSaysWhatItDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, postgresCfg())
	e.seedLogins(t, e.trader1.ID, 10, 1, true)
	var logs bytes.Buffer // written by Run's goroutine, read once it returned
	p := postgres.NewSessionPruner(e.db, accessTTL, slog.New(slog.NewJSONHandler(&logs, nil)))
	p.SetBatch(4, 1000)
	p.SetPause(time.Hour) // the round waits after its first batch until it is stopped
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx, time.Hour) }()
	for e.count(t, `SELECT count(*) FROM sessions`) == 10 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	deleted := 10 - e.count(t, `SELECT count(*) FROM sessions`)
	var line map[string]any
	for l := range strings.Lines(logs.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if m["msg"] == "pruned ended logins" {
			line = m
		}
	}
	if line == nil {
		t.Fatalf("the stopped round deleted %d logins and logged no 'pruned ended logins' line; log:\n%s", deleted, logs.String())
	}
	revoked, _ := line["revoked_sessions"].(float64)
	expired, _ := line["expired_sessions"].(float64)
	if revoked+expired != float64(deleted) || line["refresh_tokens"] != float64(2*deleted) {
		t.Errorf("logged %v, want %d logins and %d tokens", line, deleted, 2*deleted)
	}
}

// BenchmarkPruneBacklog measures a round over a backlog of ended logins (PRUNE_BACKLOG,
// default 200k, each with 2 rotated tokens and its current one) while 4 clients log in and
// refresh, and reports those calls' latency, with a baseline of the same calls before. Not
// run by `make test`:
//
//	hack/services.sh go test -run XXX -bench PruneBacklog -benchtime 1x ./runtime/postgres/
func BenchmarkPruneBacklog(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("PRUNE_BACKLOG")); err == nil && v > 0 {
		n = v
	}
	// One round per iteration, on a backlog of its own; prune-s is the round's time.
	for range b.N {
		e := newEnvTB(b)
		e.seedLogins(b, e.trader2.ID, n, 2, true)
		e.exec(b, `VACUUM ANALYZE sessions`)
		e.exec(b, `VACUUM ANALYZE refresh_tokens`)
		base := authLatencies(b, e, 2*time.Second, nil)
		var r postgres.PruneResult
		var took time.Duration
		during := authLatencies(b, e, 0, func() {
			start := time.Now()
			var err error
			r, err = quietPruner(e.db).Prune(context.Background())
			took = time.Since(start)
			if err != nil {
				b.Error(err)
			}
		})
		b.Logf("pruned %d logins and %d tokens in %d batches in %v", r.Revoked+r.Expired, r.Tokens, r.Batches, took)
		b.Logf("login+refresh (CreateSession, RotateRefreshToken) before: %s", base)
		b.Logf("login+refresh during the prune:                           %s", during)
		b.ReportMetric(took.Seconds(), "prune-s")
	}
}

type latencies []time.Duration

func (l latencies) String() string {
	if len(l) == 0 {
		return "none"
	}
	slices.Sort(l)
	q := func(p float64) time.Duration { return l[int(p*float64(len(l)-1))] }
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(l), q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), l[len(l)-1].Round(time.Microsecond))
}

// authLatencies runs 4 clients that each log in and refresh twice in a loop, for d, or until
// work returns, and returns the latency of each call.
func authLatencies(b *testing.B, e *env, d time.Duration, work func()) latencies {
	stop := make(chan struct{})
	var (
		mu  sync.Mutex
		all latencies
		wg  sync.WaitGroup
	)
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			exp := time.Now().Add(time.Hour)
			var own latencies
			run := uuid.NewString()
			for i := 0; ; i++ {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, own...)
					mu.Unlock()
					return
				default:
				}
				tok := func(k int) []byte { return fmt.Appendf(nil, "bench-%s-%d-%d-%d", run, c, i, k) }
				start := time.Now()
				if _, err := e.sessions.CreateSession(ctx, e.trader1.ID, e.trader1.Roles, tok(0), exp); err != nil {
					b.Error(err)
					return
				}
				own = append(own, time.Since(start))
				for k := range 2 {
					start = time.Now()
					if _, _, err := e.sessions.RotateRefreshToken(ctx, tok(k), tok(k+1), exp); err != nil {
						b.Error(err)
						return
					}
					own = append(own, time.Since(start))
				}
			}
		}()
	}
	if work != nil {
		work()
	} else {
		time.Sleep(d)
	}
	close(stop)
	wg.Wait()
	return all
}
