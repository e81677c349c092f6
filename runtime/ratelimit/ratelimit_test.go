package ratelimit_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/ratelimit"
	"github.com/findmy/trading-operator/runtime/redis"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// openPatientRedis opens a client for the tests of the shared limits themselves, whose counts
// are exact: one reply slower than the production bound of a call (100 ms; the race detector
// on two shared cores, batches of concurrent callers) would make a replica decide alone and
// the count come out wrong. Its bound is generous.
func openPatientRedis(t testing.TB, url, prefix string) *redis.Client {
	t.Helper()
	return openRedisWith(t, url, redis.Options{Prefix: prefix, PingInterval: 50 * time.Millisecond, OpTimeout: 5 * time.Second})
}

// openRedis opens a client with the production bound of a call: for the tests of a hung or
// dead Redis, and the benchmarks.
func openRedis(t testing.TB, url, prefix string) *redis.Client {
	t.Helper()
	return openRedisWith(t, url, redis.Options{Prefix: prefix, PingInterval: 50 * time.Millisecond})
}

func openRedisWith(t testing.TB, url string, o redis.Options) *redis.Client {
	t.Helper()
	c, err := redis.OpenWith(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type recorder struct {
	mu       sync.Mutex
	rejected map[string]int
	local    bool
}

func (r *recorder) RateLimited(class string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rejected == nil {
		r.rejected = map[string]int{}
	}
	r.rejected[class]++
}
func (r *recorder) SetRateLimitFallback(local bool) { r.mu.Lock(); r.local = local; r.mu.Unlock() }
func (r *recorder) isLocal() bool                   { r.mu.Lock(); defer r.mu.Unlock(); return r.local }

// server is one replica's login route behind the limiter, as runtime/http's Guard wires it.
func loginRoute(l *ratelimit.Limiter) http.Handler {
	return l.Route("login", "POST /api/auth/login", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
}

func login(h http.Handler, peer string, xff ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/api/auth/login", nil)
	r.RemoteAddr = peer
	for _, x := range xff {
		r.Header.Add("X-Forwarded-For", x)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// Two replicas on one Redis together allow exactly the login limit from one client IP.
func TestLoginLimitSharedAcrossReplicas(t *testing.T) {
	url, prefix := redistest.SharedURL(t), redistest.Prefix(t)
	rec := &recorder{}
	cfg := ratelimit.DefaultConfig()
	a := loginRoute(ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix), Metrics: rec}))
	b := loginRoute(ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix), Metrics: rec}))

	for i := range 5 {
		h := a
		if i%2 == 1 {
			h = b
		}
		w := login(h, "203.0.113.7:5555")
		if w.Code != http.StatusOK {
			t.Fatalf("login %d refused with %d", i+1, w.Code)
		}
		if w.Header().Get("RateLimit-Limit") != "5" || w.Header().Get("RateLimit-Remaining") != strconv.Itoa(4-i) ||
			w.Header().Get("RateLimit-Reset") == "" {
			t.Fatalf("login %d headers: %v", i+1, w.Header())
		}
	}
	w := login(b, "203.0.113.7:6666")
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("6th login across two replicas got %d, want 429", w.Code)
	}
	if ra, _ := strconv.Atoi(w.Header().Get("Retry-After")); ra < 1 {
		t.Fatalf("Retry-After = %q", w.Header().Get("Retry-After"))
	}
	if w.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("Content-Type = %q", w.Header().Get("Content-Type"))
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Status != 429 || p.Title == "" {
		t.Fatalf("problem body %q: %v", w.Body.String(), err)
	}
	if w.Header().Get("RateLimit-Remaining") != "0" {
		t.Fatalf("RateLimit-Remaining on 429 = %q", w.Header().Get("RateLimit-Remaining"))
	}
	if rec.rejected["login"] != 1 || rec.isLocal() {
		t.Fatalf("recorder: %v local=%v", rec.rejected, rec.local)
	}
	// Another client IP has its own budget.
	if w := login(a, "203.0.113.8:1"); w.Code != http.StatusOK {
		t.Fatalf("another client got %d", w.Code)
	}
}

// The global limits count logins too, per client IP (before login a client is its IP), on
// every replica: with the login class off, the global per-minute limit refuses the fourth
// login of a client across two replicas, and another client is not affected. Refreshes do
// not count against it.
func TestGlobalLimitCountsLogins(t *testing.T) {
	url, prefix := redistest.SharedURL(t), redistest.Prefix(t)
	rec := &recorder{}
	cfg := ratelimit.Config{GlobalPerMinute: 3, GlobalPerDay: 1000}
	a := ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix), Metrics: rec})
	b := ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix), Metrics: rec})
	refresh := a.Route("login", "POST /api/auth/refresh", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for range 5 {
		r := httptest.NewRequest(http.MethodPost, "/api/auth/refresh", nil)
		r.RemoteAddr = "203.0.113.9:1"
		w := httptest.NewRecorder()
		refresh.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Fatalf("refresh with only global limits on: %d", w.Code)
		}
	}
	for i, h := range []http.Handler{loginRoute(a), loginRoute(b), loginRoute(a)} {
		w := login(h, "203.0.113.9:1")
		if w.Code != http.StatusOK || w.Header().Get("RateLimit-Limit") != "3" || w.Header().Get("RateLimit-Remaining") != strconv.Itoa(2-i) {
			t.Fatalf("login %d: %d, headers %v", i+1, w.Code, w.Header())
		}
	}
	if w := login(loginRoute(b), "203.0.113.9:2"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("fourth login of a client across two replicas with a global limit of 3/min: %d, want 429", w.Code)
	}
	if rec.rejected["global_minute"] != 1 {
		t.Fatalf("rejections: %v", rec.rejected)
	}
	if w := login(loginRoute(a), "203.0.113.10:1"); w.Code != http.StatusOK {
		t.Fatalf("another client's login: %d", w.Code)
	}
}

// A forged X-Forwarded-For from an untrusted peer changes nothing; from a trusted proxy it
// is honoured, right-most untrusted entry first.
func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	url := redistest.SharedURL(t)
	cfg := ratelimit.DefaultConfig()
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	h := loginRoute(ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, redistest.Prefix(t))}))

	for i := range 6 {
		forged := "198.51.100." + strconv.Itoa(i+1)
		w := login(h, "203.0.113.9:1234", forged)
		if want := http.StatusOK; i == 5 {
			if w.Code != http.StatusTooManyRequests {
				t.Fatalf("a forged X-Forwarded-For escaped the login limit (6th attempt got %d)", w.Code)
			}
		} else if w.Code != want {
			t.Fatalf("attempt %d got %d", i+1, w.Code)
		}
	}
	// Behind the trusted proxy every client is itself: 6 different clients pass.
	for i := range 6 {
		client := "192.0.2." + strconv.Itoa(i+1)
		if w := login(h, "10.1.2.3:443", "6.6.6.6, "+client); w.Code != http.StatusOK {
			t.Fatalf("client %s behind the proxy got %d", client, w.Code)
		}
	}
	// One client through the proxy, spoofing the left part of the header: still one bucket.
	for i := range 6 {
		w := login(h, "10.1.2.3:443", "7.7.7."+strconv.Itoa(i)+", 192.0.2.200")
		if i == 5 && w.Code != http.StatusTooManyRequests {
			t.Fatalf("left-most X-Forwarded-For entries escaped the limit")
		}
	}
}

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	for _, tc := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"203.0.113.1:80", nil, "203.0.113.1"},
		{"203.0.113.1:80", []string{"1.1.1.1"}, "203.0.113.1"},
		{"10.0.0.1:80", nil, "10.0.0.1"},
		{"10.0.0.1:80", []string{"1.1.1.1"}, "1.1.1.1"},
		{"10.0.0.1:80", []string{"9.9.9.9, 1.1.1.1, 10.0.0.2"}, "1.1.1.1"},
		{"10.0.0.1:80", []string{"9.9.9.9", "1.1.1.1"}, "1.1.1.1"},
		{"10.0.0.1:80", []string{"garbage, 10.0.0.5"}, "10.0.0.5"},
		{"[::1]:80", []string{"2001:db8::1"}, "2001:db8::1"},
		{"[::ffff:203.0.113.1]:80", nil, "203.0.113.1"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tc.peer
		for _, x := range tc.xff {
			r.Header.Add("X-Forwarded-For", x)
		}
		if got := ratelimit.ClientIP(r, trusted).String(); got != tc.want {
			t.Errorf("ClientIP(%s, %v) = %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}

func withUser(r *http.Request, id uuid.UUID) *http.Request {
	return r.WithContext(trading.NewContextWithPrincipal(r.Context(), trading.Principal{UserID: id, Roles: []trading.Role{trading.RoleTrader}}))
}

// Per-user classes: the class limit, the global limits over all classes, 0 turning a class off.
func TestPerUserClasses(t *testing.T) {
	cfg := ratelimit.Config{Trading: 2, Data: 0, GlobalPerMinute: 4, GlobalPerDay: 100}
	rec := &recorder{}
	l := ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, redistest.SharedURL(t), redistest.Prefix(t)), Metrics: rec})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	h := l.Middleware(ok)
	user := uuid.New()
	do := func(method, path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, withUser(httptest.NewRequest(method, path, nil), user))
		return w
	}
	if w := do("POST", "/api/orders"); w.Code != 200 || w.Header().Get("RateLimit-Limit") != "2" {
		t.Fatalf("first order: %d %v", w.Code, w.Header())
	}
	if w := do("POST", "/api/orders/"+uuid.NewString()+"/approve"); w.Code != 200 {
		t.Fatalf("approve: %d", w.Code)
	}
	if w := do("POST", "/api/orders/x/reject"); w.Code != 429 {
		t.Fatalf("3rd trading request got %d, want 429", w.Code)
	}
	// data is off but still counts in the global per-minute budget (4): 2 used, 1 refused by trading.
	if w := do("GET", "/api/positions"); w.Code != 200 || w.Header().Get("RateLimit-Limit") != "4" {
		t.Fatalf("data request: %d limit %q", w.Code, w.Header().Get("RateLimit-Limit"))
	}
	if w := do("GET", "/api/summary"); w.Code != 200 {
		t.Fatalf("data request: %d", w.Code)
	}
	if w := do("GET", "/api/trades"); w.Code != 429 {
		t.Fatalf("5th request of the minute got %d, want 429 (global)", w.Code)
	}
	if rec.rejected["trading"] != 1 || rec.rejected["global_minute"] != 1 {
		t.Fatalf("rejections %v", rec.rejected)
	}
	// Another user is not affected; unauthenticated requests pass to authentication.
	w := httptest.NewRecorder()
	h.ServeHTTP(w, withUser(httptest.NewRequest("GET", "/api/positions", nil), uuid.New()))
	if w.Code != 200 {
		t.Fatalf("another user got %d", w.Code)
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/api/positions", nil))
	if w.Code != 200 || w.Header().Get("RateLimit-Limit") != "" {
		t.Fatalf("unauthenticated request: %d %v", w.Code, w.Header())
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		class        ratelimit.Class
		ok           bool
	}{
		{"POST", "/api/auth/login", ratelimit.Login, true},
		{"POST", "/api/auth/refresh", ratelimit.Login, true},
		{"POST", "/api/orders", ratelimit.Trading, true},
		{"POST", "/api/orders/abc/approve", ratelimit.Trading, true},
		{"POST", "/api/orders/abc/reject", ratelimit.Trading, true},
		{"GET", "/api/orders/abc", ratelimit.Data, true},
		{"GET", "/api/auth/me", ratelimit.Data, true},
		{"GET", "/openapi.json", "", false},
		{"GET", "/metrics", "", false},
	} {
		c, ok := ratelimit.Classify(tc.method, tc.path)
		if c != tc.class || ok != tc.ok {
			t.Errorf("Classify(%s %s) = %q %v", tc.method, tc.path, c, ok)
		}
	}
}

// Redis dies: limits fall back to the process (and say so); Redis returns: the shared
// limit holds across replicas again.
func TestFallbackAndResume(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	cfg := ratelimit.Config{Login: 3}
	recA := &recorder{}
	la := ratelimit.New(cfg, ratelimit.Options{Redis: openRedis(t, srv.URL(), prefix), Metrics: recA})
	lb := ratelimit.New(cfg, ratelimit.Options{Redis: openRedis(t, srv.URL(), prefix)})
	a, b := loginRoute(la), loginRoute(lb)

	srv.Stop()
	// Decided locally: each replica allows the full limit on its own, nothing fails.
	for i := range 3 {
		if w := login(a, "203.0.113.50:1"); w.Code != 200 {
			t.Fatalf("local attempt %d on A got %d", i+1, w.Code)
		}
	}
	if w := login(a, "203.0.113.50:1"); w.Code != 429 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("4th local attempt on A got %d", w.Code)
	}
	redistest.Eventually(t, 5*time.Second, "the limiter reports the fallback", func() bool { return la.Local() && recA.isLocal() })

	srv.Restart()
	redistest.Eventually(t, 10*time.Second, "shared limits resume", func() bool { return !la.Local() && !lb.Local() })
	if recA.isLocal() {
		t.Fatal("the fallback gauge was not cleared")
	}
	for i := range 3 {
		h := a
		if i == 1 {
			h = b
		}
		if w := login(h, "203.0.113.51:1"); w.Code != 200 {
			t.Fatalf("shared attempt %d got %d", i+1, w.Code)
		}
	}
	if w := login(b, "203.0.113.51:1"); w.Code != 429 {
		t.Fatalf("4th attempt across replicas after recovery got %d: limits are not shared", w.Code)
	}
}

// An IPv6 client cannot rotate through its /64 to escape the login limit.
func TestIPv6ClientsCountPer64(t *testing.T) {
	h := loginRoute(ratelimit.New(ratelimit.Config{Login: 2}, ratelimit.Options{}))
	for i, peer := range []string{"[2001:db8:1:2::1]:1", "[2001:db8:1:2::2]:1", "[2001:db8:1:2:ffff::9]:1"} {
		w := login(h, peer)
		if (i < 2) != (w.Code == 200) {
			t.Fatalf("attempt %d from %s got %d", i+1, peer, w.Code)
		}
	}
	if w := login(h, "[2001:db8:1:3::1]:1"); w.Code != 200 {
		t.Fatalf("another /64 got %d", w.Code)
	}
}

// A hung Redis: requests are still decided (per process), none fails or hangs forever.
func TestHungRedis(t *testing.T) {
	srv := redistest.Start(t)
	l := ratelimit.New(ratelimit.Config{Login: 2}, ratelimit.Options{Redis: openRedis(t, srv.URL(), redistest.Prefix(t))})
	h := loginRoute(l)
	srv.Pause()
	defer srv.Resume()
	codes := []int{}
	for range 3 {
		codes = append(codes, login(h, "192.0.2.77:1").Code)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Fatalf("codes while Redis hangs: %v, want [200 200 429] from the local limiter", codes)
	}
	redistest.Eventually(t, 10*time.Second, "fallback reported", l.Local)
}

// Without Redis at all: per-process limits.
func TestNoRedis(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{Login: 1}, ratelimit.Options{})
	h := loginRoute(l)
	if w := login(h, "192.0.2.1:1"); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if w := login(h, "192.0.2.1:1"); w.Code != 429 {
		t.Fatal(w.Code)
	}
	if !l.Local() {
		t.Fatal("not local")
	}
}

// sharedAndLocal are the limiter's two modes: buckets in Redis at url (a prefix of the
// test's own) and buckets in process.
func sharedAndLocal(t *testing.T, url string) map[string]ratelimit.Options {
	return map[string]ratelimit.Options{
		"shared": {Redis: openPatientRedis(t, url, redistest.Prefix(t))},
		"local":  {},
	}
}

// A request refused by one bucket uses up nothing in the others, shared or local.
func TestRefusedRequestCostsNothing(t *testing.T) {
	cfg := ratelimit.Config{Trading: 2, GlobalPerMinute: 1}
	for name, o := range sharedAndLocal(t, redistest.SharedURL(t)) {
		t.Run(name, func(t *testing.T) {
			l := ratelimit.New(cfg, o)
			u := uuid.NewString()
			both := []ratelimit.Request{{Class: ratelimit.Trading, Key: u}, {Class: ratelimit.GlobalMinute, Key: u}}
			if d := l.CheckAll(context.Background(), both...); !d.Allowed || d.Class != ratelimit.GlobalMinute || d.Remaining != 0 {
				t.Fatalf("first: %+v", d)
			}
			d := l.CheckAll(context.Background(), both...)
			if d.Allowed || d.Class != ratelimit.GlobalMinute || d.RetryAfter <= 0 {
				t.Fatalf("second: %+v, want refused by global_minute", d)
			}
			if d := l.Check(context.Background(), ratelimit.Trading, u); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("trading bucket after the refusal: %+v, want 1 request used, 1 left before this one", d)
			}
		})
	}
}

// A request that several buckets refuse is answered with the one that allows latest: its
// Retry-After is when the request would go through. Data 3/min and 3/day, 3 requests: the
// 4th said "data, retry after 20 seconds", and the retry 20 s later was refused for 8 hours.
// Likewise the headers of an allowed request: of buckets with as many left, the one that
// fills last.
func TestRetryAfterWaitsForEveryRefusingBucket(t *testing.T) {
	cfg := ratelimit.Config{Data: 3, GlobalPerDay: 3}
	for name, o := range sharedAndLocal(t, redistest.SharedURL(t)) {
		t.Run(name, func(t *testing.T) {
			l := ratelimit.New(cfg, o)
			u := uuid.NewString()
			both := []ratelimit.Request{{Class: ratelimit.Data, Key: u}, {Class: ratelimit.GlobalDay, Key: u}}
			for i := range 3 {
				d := l.CheckAll(context.Background(), both...)
				if !d.Allowed {
					t.Fatalf("request %d: %+v", i+1, d)
				}
				// Both buckets have as many left after each: the headers describe the day's,
				// which fills last (they said data: 0 left, full again in 60 s).
				if d.Class != ratelimit.GlobalDay || d.Reset < 7*time.Hour {
					t.Fatalf("request %d: %+v, want the headers of global_day", i+1, d)
				}
			}
			// This replica's own buckets refuse it; with Redis, so does the script for another
			// replica, which let nothing through itself.
			deciders := map[string]*ratelimit.Limiter{"this replica": l}
			if o.Redis != nil {
				deciders["another replica"] = ratelimit.New(cfg, o)
			}
			for who, l := range deciders {
				d := l.CheckAll(context.Background(), both...)
				if d.Allowed || d.Class != ratelimit.GlobalDay || d.RetryAfter < 7*time.Hour || d.Reset < 23*time.Hour {
					t.Fatalf("4th on %s: %+v, want refused by global_day, retry after about 8 h, full again in about 24 h", who, d)
				}
			}
		})
	}
}

// Requests decided in one script call (the ones in flight together) are decided exactly as
// one by one: under 400 concurrent requests from 4 users on two replicas, each user gets
// exactly its limit, and each allowed request saw its own count (remaining 49, 48, ... 0,
// every value once).
func TestConcurrentRequestsOnTwoReplicasAllowExactlyTheLimit(t *testing.T) {
	const limit, users, perUser = 50, 4, 100
	url, prefix := redistest.SharedURL(t), redistest.Prefix(t)
	// The per-day bucket is the tight one: it refills one request every 1728 s, not
	// during the test.
	cfg := ratelimit.Config{Data: 1 << 20, GlobalPerMinute: 1 << 20, GlobalPerDay: limit}
	replicas := []*ratelimit.Limiter{
		ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix)}),
		ratelimit.New(cfg, ratelimit.Options{Redis: openPatientRedis(t, url, prefix)}),
	}
	var (
		mu        sync.Mutex
		remaining = map[string][]int{}
		wg        sync.WaitGroup
	)
	for u := range users {
		user := uuid.NewString()
		for i := range perUser {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := replicas[i%2].CheckAll(context.Background(),
					ratelimit.Request{Class: ratelimit.Data, Key: user},
					ratelimit.Request{Class: ratelimit.GlobalMinute, Key: user},
					ratelimit.Request{Class: ratelimit.GlobalDay, Key: user})
				if !d.Shared {
					t.Errorf("user %d: decided without Redis: %+v", u, d)
				}
				if d.Allowed {
					mu.Lock()
					remaining[user] = append(remaining[user], d.Remaining)
					mu.Unlock()
				} else if d.Class != ratelimit.GlobalDay || d.RetryAfter <= 0 {
					t.Errorf("user %d: refused %+v, want refused by global_day with a Retry-After", u, d)
				}
			}()
		}
	}
	wg.Wait()
	if len(remaining) != users {
		t.Fatalf("%d users got requests through, want %d", len(remaining), users)
	}
	for user, got := range remaining {
		slices.Sort(got)
		want := make([]int, limit)
		for i := range want {
			want[i] = i
		}
		if !slices.Equal(got, want) {
			t.Errorf("user %s: %d allowed with remaining %v, want %d with 0..%d once each", user, len(got), got, limit, limit-1)
		}
	}
}

// The shared buckets keep redis_rate's state under redis_rate's keys (without a key prefix):
// one bucket spent alternately through the limiter and through redis_rate v10 itself gives the
// same decisions and the same remaining counts as either alone. So the limiter is redis_rate's
// GCRA, extended to several buckets decided together, not an algorithm of its own.
func TestSameStateAsRedisRate(t *testing.T) {
	c := openPatientRedis(t, redistest.SharedURL(t), "")
	// On a loaded machine the first ping can time out: decide in Redis, not in the process.
	redistest.Eventually(t, 10*time.Second, "Redis answering", c.Healthy)
	ours := ratelimit.New(ratelimit.Config{Trading: 5}, ratelimit.Options{Redis: c})
	theirs := redis_rate.NewLimiter(c.Redis())
	user := uuid.NewString()
	t.Cleanup(func() { c.Redis().Del(context.Background(), "rate:rl:trading:"+user) })
	ctx := context.Background()

	for i := range 7 {
		var allowed bool
		var remaining int
		if i%2 == 0 {
			d := ours.Check(ctx, ratelimit.Trading, user)
			if !d.Shared {
				t.Fatalf("check %d was decided in the process, not in Redis", i+1)
			}
			allowed, remaining = d.Allowed, d.Remaining
		} else {
			res, err := theirs.Allow(ctx, "rl:trading:"+user, redis_rate.PerMinute(5))
			if err != nil {
				t.Fatal(err)
			}
			allowed, remaining = res.Allowed > 0, res.Remaining
		}
		wantAllowed, wantRemaining := i < 5, max(0, 4-i)
		if allowed != wantAllowed || remaining != wantRemaining {
			t.Errorf("request %d (through %s): allowed %v remaining %d, want %v and %d",
				i+1, map[bool]string{true: "the limiter", false: "redis_rate"}[i%2 == 0], allowed, remaining, wantAllowed, wantRemaining)
		}
	}
}

// A switch between the shared buckets and the per-process ones gives no client a fresh
// budget: a client that used its limit just before Redis went away is still refused by
// the replica that served it while Redis is down, and one that used its limit on that
// replica while Redis was down is still refused once Redis is back (which knows nothing of
// the outage's requests: here it restarts empty).
func TestNoFreshBudgetAtTheSwitch(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	l := ratelimit.New(ratelimit.Config{Login: 3}, ratelimit.Options{Redis: openRedis(t, srv.URL(), redistest.Prefix(t)), Metrics: rec})
	h := loginRoute(l)
	redistest.Eventually(t, 10*time.Second, "shared limits", func() bool { return !l.Local() })

	for i := range 3 {
		if w := login(h, "203.0.113.60:1"); w.Code != 200 {
			t.Fatalf("shared attempt %d got %d", i+1, w.Code)
		}
	}
	srv.Stop()
	redistest.Eventually(t, 10*time.Second, "the fallback", func() bool { return l.Local() && rec.isLocal() })
	if w := login(h, "203.0.113.60:1"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("4th attempt right after Redis went away got %d, want 429: the fallback started from a full bucket", w.Code)
	} else if ra, _ := strconv.Atoi(w.Header().Get("Retry-After")); ra < 1 || w.Header().Get("RateLimit-Remaining") != "0" {
		t.Fatalf("429 headers: %v", w.Header())
	}

	for i := range 3 {
		if w := login(h, "203.0.113.61:1"); w.Code != 200 {
			t.Fatalf("local attempt %d got %d", i+1, w.Code)
		}
	}
	srv.Restart()
	redistest.Eventually(t, 10*time.Second, "shared limits resume", func() bool { return !l.Local() && !rec.isLocal() })
	if w := login(h, "203.0.113.61:1"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("4th attempt right after Redis came back got %d, want 429: the outage's requests were forgotten", w.Code)
	}
	// A client the outage did not see is unaffected, and the shared buckets decide again.
	if w := login(h, "203.0.113.62:1"); w.Code != 200 || w.Header().Get("RateLimit-Remaining") != "2" {
		t.Fatalf("another client after the recovery got %d %v", w.Code, w.Header())
	}
}

// The headers of a request that Redis allows describe what this replica will do next: when
// its own buckets (which count what it let through during an outage, unknown to Redis) are
// tighter than Redis's, RateLimit-Remaining says so. A client that trusted "Remaining: 2"
// and was refused on its very next request was told wrong.
func TestHeadersAfterTheSwitchBackCountTheOutage(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	l := ratelimit.New(ratelimit.Config{Login: 3}, ratelimit.Options{Redis: openRedis(t, srv.URL(), redistest.Prefix(t)), Metrics: rec})
	h := loginRoute(l)
	redistest.Eventually(t, 10*time.Second, "shared limits", func() bool { return !l.Local() })
	srv.Stop()
	redistest.Eventually(t, 10*time.Second, "the fallback", func() bool { return l.Local() })
	for i := range 2 {
		if w := login(h, "203.0.113.70:1"); w.Code != 200 {
			t.Fatalf("local attempt %d got %d", i+1, w.Code)
		}
	}
	srv.Restart()
	redistest.Eventually(t, 10*time.Second, "shared limits resume", func() bool { return !l.Local() })
	w := login(h, "203.0.113.70:1")
	if w.Code != 200 {
		t.Fatalf("3rd attempt got %d, want 200", w.Code)
	}
	remaining := w.Header().Get("RateLimit-Remaining")
	next := login(h, "203.0.113.70:1")
	if next.Code != http.StatusTooManyRequests {
		t.Fatalf("4th attempt got %d, want 429", next.Code)
	}
	if remaining != "0" {
		t.Fatalf("the 3rd attempt said RateLimit-Remaining %s (reset %s), yet the next one was refused: want 0",
			remaining, w.Header().Get("RateLimit-Reset"))
	}
}

// RateLimit-Remaining counts down by one per request for any limit, not only for those that
// divide their period into whole seconds: a limit of 100 per minute (0.6 s a request) said 98
// after the first request and 98 again after the second, the theoretical arrival time in
// float seconds landing a hair short of the boundary.
func TestRemainingCountsDownByOne(t *testing.T) {
	url := redistest.SharedURL(t)
	for _, n := range []int{7, 60, 100, 110, 1000} {
		for name, o := range sharedAndLocal(t, url) {
			l := ratelimit.New(ratelimit.Config{Data: n}, o)
			h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			user := uuid.New()
			for i := 1; i <= 3; i++ {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, withUser(httptest.NewRequest("GET", "/api/positions", nil), user))
				if got, want := w.Header().Get("RateLimit-Remaining"), strconv.Itoa(n-i); w.Code != 200 || got != want {
					t.Errorf("%s, limit %d, request %d: %d, RateLimit-Remaining %s, want %s", name, n, i, w.Code, got, want)
				}
			}
		}
	}
}

// A Redis that answers, but later than the bound of a call (OpTimeout), stays Healthy (its
// probe waits a second), yet no request is decided by it: each script call times out and the
// request is decided by this replica's own buckets, as with Redis down. /readyz says so.
func TestSlowRedisDecidesLocally(t *testing.T) {
	u, err := url.Parse(redistest.SharedURL(t))
	if err != nil {
		t.Fatal(err)
	}
	link := redistest.Slow(t, u.Host)
	lu, err := url.Parse(link.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Host = lu.Host
	rc := openRedis(t, u.String(), redistest.Prefix(t))
	l := ratelimit.New(ratelimit.Config{Data: 1000}, ratelimit.Options{Redis: rc})
	user := uuid.NewString()
	// Redis decides while it answers in time (a loaded machine may miss the bound now and
	// then: try again for a while).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		d := l.Check(context.Background(), ratelimit.Data, user)
		if d.Allowed && d.Shared {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with Redis answering in time: %+v, want allowed by Redis", d)
		}
	}
	link.SetDelay(3 * rc.OpTimeout())
	for i := range 3 {
		if d := l.Check(context.Background(), ratelimit.Data, user); !d.Allowed || d.Shared || !rc.Healthy() {
			t.Fatalf("request %d with every reply 3 bounds late: %+v, healthy %v; want allowed by this replica, Redis still healthy", i+1, d, rc.Healthy())
		}
	}
}
