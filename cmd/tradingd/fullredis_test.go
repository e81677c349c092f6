package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// TestReplicasOnAFullRedis runs two tradingd replicas on a Redis that is full (at its
// maxmemory), as the operator's managed Redis is once enough traders, or enough client
// addresses with limiter buckets of their own, have passed through it. With the eviction
// policy the operator gives it (volatile-lru, controllers/desired_data.go) every request is
// answered, a trade approved on one replica is in the positions and summary the other
// serves at once, and the login limit still holds across both: Redis makes room by evicting
// what the runtime can lose. With noeviction (Redis's default, so an external Redis may
// well have it), Redis refuses the runtime's writes (OOM command not allowed): the requests
// are still answered, without waiting for acknowledgements that Redis would refuse too, and
// no trader is served a book from before their trade (every replica counts Redis as degraded
// at its first refused write and reads the database, /readyz says why; an approve whose
// version bump is refused deletes the counters instead, which a full Redis allows), but the
// limiter falls back to each replica's own buckets; the second case shows that this is still
// so (the reason for the managed Redis's policy).
func TestReplicasOnAFullRedis(t *testing.T) {
	for _, tt := range []struct {
		policy string
		fine   bool
	}{{"volatile-lru", true}, {"noeviction", false}} {
		t.Run(tt.policy, func(t *testing.T) {
			problems, stale, info := onFullRedis(t, tt.policy)
			t.Logf("Redis after the requests:\n%s", info)
			switch {
			case len(stale) > 0:
				t.Errorf("on a full Redis with %s:\n%s\n%s", tt.policy, strings.Join(stale, "\n"), info)
			case tt.fine && len(problems) > 0:
				t.Errorf("on a full Redis with %s:\n%s\n%s", tt.policy, strings.Join(problems, "\n"), info)
			case tt.fine && !regexp.MustCompile(`(?m)^evicted_keys:[1-9]`).MatchString(info):
				t.Errorf("Redis evicted nothing: it was not full\n%s", info)
			case !tt.fine && len(problems) == 0:
				t.Errorf("a full Redis with %s broke nothing: the managed Redis's policy lost its reason\n%s", tt.policy, info)
			case !tt.fine:
				t.Logf("with %s, as expected:\n%s", tt.policy, strings.Join(problems, "\n"))
			}
		})
	}
}

// onFullRedis fills a throwaway Redis with keys that have a TTL (more than maxmemory), gives it
// policy, runs two replicas on it and returns what went wrong, the stale reads apart, and
// Redis's stats.
func onFullRedis(t *testing.T, policy string) (problems, stale []string, info string) {
	srv := redistest.Start(t)
	rdb := serverClient(t, srv)
	ctx := context.Background()
	a, b := twoReplicas(t, srv.URL(), map[string]string{"RATE_LIMIT_LOGIN": "4"})

	// 3 MB of other keys with a TTL (an hour: none expires during the test), then a maxmemory
	// 1 MB below what Redis holds: every write the replicas make from now on finds it full.
	filler := strings.Repeat("x", 1024)
	for i := 0; i < 3000; i += 100 {
		pipe := rdb.Pipeline()
		for j := i; j < i+100; j++ {
			pipe.Set(ctx, fmt.Sprintf("filler:%d", j), filler, time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^used_memory:(\d+)`).FindStringSubmatch(mem)
	if m == nil {
		t.Fatalf("INFO memory: %s", mem)
	}
	usedMemory, _ := strconv.ParseInt(m[1], 10, 64)
	for _, kv := range [][2]string{{"maxmemory-policy", policy}, {"maxmemory", strconv.FormatInt(usedMemory-1<<20, 10)}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}

	wrong := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	// The login limit of 127.0.0.1 is shared: four logins over both replicas use it up.
	trader := token(t, a.api[len("http://"):], "trader1", "password123")
	risk := token(t, b.api[len("http://"):], "risk1", "password789")
	token(t, a.api[len("http://"):], "trader2", "password456")
	token(t, b.api[len("http://"):], "trader2", "password456")
	if code, _, _ := call(t, "POST", a.api+"/api/auth/login", "", `{"username":"trader1","password":"password123"}`); code != http.StatusTooManyRequests {
		wrong("fifth login over two replicas with RATE_LIMIT_LOGIN=4: %d, want 429 (the limit did not hold across replicas)", code)
	}

	bookOn(t, b, trader)
	bookOn(t, b, trader) // B has the trader's empty book in its caches
	total := 0
	for i, qty := range []int{1, 2, 3} {
		tradeOn(t, a, trader, risk, qty)
		total += qty
		if q, n := bookOn(t, b, trader); q != strconv.Itoa(total) || n != i+1 {
			stale = append(stale, fmt.Sprintf("after approve %d on A, B serves quantity %s and %d trades today, want %d and %d (a book from before the trade)", i+1, q, n, total, i+1))
		}
		bookOn(t, a, trader)
	}
	for _, r := range []replica{a, b} {
		code, body := get(t, r.admin+"/readyz")
		if code != 200 {
			wrong("/readyz on %s: %d %s", r.admin, code, body)
		}
		if policy == "noeviction" && !strings.Contains(body, "refused: OOM") {
			// The operator of the Redis must be told why the caches are off.
			stale = append(stale, fmt.Sprintf("/readyz on %s does not say that Redis refuses writes for want of memory: %s", r.admin, body))
		}
	}
	stats, err := rdb.Info(ctx, "memory", "stats", "errorstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if oom := regexp.MustCompile(`(?m)^errorstat_OOM:count=\d+`).FindString(stats); oom != "" {
		wrong("Redis refused writes for want of memory (%s)", oom)
	}
	return problems, stale, strings.Join(regexp.MustCompile(`(?m)^(used_memory|maxmemory|evicted_keys|errorstat_\w+):.*$`).FindAllString(stats, -1), "\n")
}
