package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

// TestReplicasOnARedisThatRefusesWrites runs two tradingd replicas on a Redis that goes on
// answering reads, with the data it had, but refuses every write, DEL included:
//   - READONLY: a failover that left the replicas' connections on the old master, now a
//     replica of the new one (a DNS name that still resolves to it, as with a cloud-managed
//     Redis), holding the same keys, version counters included;
//   - MISCONF: stop-writes-on-bgsave-error after an RDB save that failed.
//
// A trade approved on A meanwhile must be in the positions and summary B serves at once,
// although B had the trader's book in its caches: A's version bump is refused, so B may
// answer from neither level. /readyz says why the cache and the limits are degraded. Once
// Redis takes writes again, the book B serves is still the fresh one (nothing cached before
// is trusted again), and the next trade shows on B through the cache as usual.
//
// With every rate limit off too ("limits off"): then B writes nothing when it serves a read,
// so only its pinger can notice the refusal, and A's approve must not answer before it has.
func TestReplicasOnARedisThatRefusesWrites(t *testing.T) {
	for _, limits := range []string{"limits on", "limits off"} {
		t.Run(limits, func(t *testing.T) { replicasOnARedisThatRefusesWrites(t, limits == "limits off") })
	}
}

func replicasOnARedisThatRefusesWrites(t *testing.T, limitsOff bool) {
	ctx := context.Background()
	t.Run("READONLY", func(t *testing.T) {
		onRefusingRedis(t, "READONLY", limitsOff, func(t *testing.T, x *redistest.Server, rx *goredis.Client) func() {
			// A failover as Sentinel or a managed service does it: Y replicates X, then Y is
			// promoted and X follows it. X keeps its keys (it resynchronizes from a copy of
			// them) and refuses writes.
			y := redistest.Start(t)
			ry := serverClient(t, y)
			for _, c := range []*goredis.Client{rx, ry} {
				if err := c.ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := ry.Do(ctx, "REPLICAOF", "127.0.0.1", x.Port).Err(); err != nil {
				t.Fatal(err)
			}
			redistest.Eventually(t, 10*time.Second, "Y replicating X", func() bool {
				n, err := rx.Wait(ctx, 1, 100*time.Millisecond).Result()
				return err == nil && n == 1
			})
			if err := ry.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
				t.Fatal(err)
			}
			if err := rx.Do(ctx, "REPLICAOF", "127.0.0.1", y.Port).Err(); err != nil {
				t.Fatal(err)
			}
			redistest.Eventually(t, 10*time.Second, "X replicating Y", func() bool {
				info, err := rx.Info(ctx, "replication").Result()
				return err == nil && strings.Contains(info, "master_link_status:up")
			})
			return func() { // X is a master again (with Y's data, the same)
				if err := rx.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
	t.Run("MISCONF", func(t *testing.T) {
		onRefusingRedis(t, "MISCONF", limitsOff, func(t *testing.T, x *redistest.Server, rx *goredis.Client) func() {
			// An RDB save into a directory that is gone (root ignores permissions; Redis does
			// not let CONFIG SET move dir): the save fails, and with a save point configured
			// stop-writes-on-bgsave-error (on by default) refuses writes.
			dir, err := rx.ConfigGet(ctx, "dir").Result()
			if err != nil || dir["dir"] == "" {
				t.Fatalf("CONFIG GET dir: %v %v", dir, err)
			}
			if err := rx.ConfigSet(ctx, "save", "3600 1").Err(); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(dir["dir"]); err != nil {
				t.Fatal(err)
			}
			if err := rx.BgSave(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			redistest.Eventually(t, 10*time.Second, "a failed RDB save", func() bool {
				info, err := rx.Info(ctx, "persistence").Result()
				return err == nil && strings.Contains(info, "rdb_last_bgsave_status:err")
			})
			return func() { // no save point: writes are taken again
				if err := rx.ConfigSet(ctx, "save", "").Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
}

// serverClient is a plain client of s for the test's own commands.
func serverClient(t *testing.T, s *redistest.Server) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.Port)})
	t.Cleanup(func() { c.Close() })
	return c
}

// onRefusingRedis runs two replicas on a throwaway Redis X, warms B's caches with the trader's
// book, makes X refuse writes with refuse (whose reply starts with reply), approves trades
// on A and reads them on B; then lets X take writes again (refuse's result) and reads again.
// limitsOff turns every rate limit off.
func onRefusingRedis(t *testing.T, reply string, limitsOff bool, refuse func(*testing.T, *redistest.Server, *goredis.Client) (accept func())) {
	ctx := context.Background()
	x := redistest.Start(t)
	rx := serverClient(t, x)
	limits := map[string]string{}
	if limitsOff {
		for _, l := range []string{"LOGIN", "TRADING", "DATA", "GLOBAL_PER_MINUTE", "GLOBAL_PER_DAY"} {
			limits["RATE_LIMIT_"+l] = "0"
		}
	}
	a, b := twoReplicas(t, x.URL(), limits)
	trader := token(t, a.api[len("http://"):], "trader1", "password123")
	risk := token(t, b.api[len("http://"):], "risk1", "password789")

	total, trades := 0, 0
	var stale []string
	check := func(when string) {
		t.Helper()
		if q, n := bookOn(t, b, trader); q != strconv.Itoa(total) || n != trades {
			stale = append(stale, fmt.Sprintf("%s, B serves quantity %s and %d trades today, want %d and %d (a book from before the trade)", when, q, n, total, trades))
		}
	}
	approve := func(qty int) {
		t.Helper()
		tradeOn(t, a, trader, risk, qty)
		total += qty
		trades++
	}

	// B reads the trader's empty book until it has it in L1 and L2. Once was enough on an idle
	// machine; on a loaded one a reply past the cache's 100 ms bound makes B distrust Redis for
	// a moment and read the database without caching, so it reads again (as a trader would).
	var versions []string
	for deadline := time.Now().Add(20 * time.Second); ; {
		bookOn(t, b, trader)
		var err error
		if versions, err = rx.Keys(ctx, "cache-version:*").Result(); err == nil && len(versions) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no version counters in Redis after B read the book for 20 s: %v %v", versions, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	bookOn(t, b, trader) // and from its caches

	accept := refuse(t, x, rx)
	if err := rx.Set(ctx, "refused-write", "1", time.Minute).Err(); err == nil || !strings.HasPrefix(err.Error(), reply) {
		t.Fatalf("a write to X: %v, want a %s reply", err, reply)
	}
	if n, err := rx.Exists(ctx, versions...).Result(); err != nil || n != int64(len(versions)) {
		t.Fatalf("X lost the version counters (%d of %d left, %v): it would not be the Redis of a failover", n, len(versions), err)
	}
	for i, qty := range []int{1, 2} {
		approve(qty)
		check(fmt.Sprintf("after approve %d on A while Redis refuses writes (%s)", i+1, reply))
		bookOn(t, a, trader)
	}
	for _, r := range []replica{a, b} {
		code, body := get(t, r.admin+"/readyz")
		if code != 200 || !strings.Contains(body, "degraded") || !strings.Contains(body, reply) {
			t.Errorf("/readyz on %s while Redis refuses writes: %d %s, want 200 saying degraded and why (%s)", r.admin, code, body, reply)
		}
	}

	accept()
	degraded := regexp.MustCompile(`degraded`)
	for _, r := range []replica{a, b} {
		redistest.Eventually(t, 10*time.Second, "/readyz on "+r.admin+" no longer degraded once Redis takes writes", func() bool {
			code, body := get(t, r.admin+"/readyz")
			return code == 200 && !degraded.MatchString(body)
		})
	}
	check("once Redis takes writes again")
	bookOn(t, b, trader)
	check("read again on B once Redis takes writes again")
	approve(3)
	check("after approve 3 on A, once Redis takes writes again")
	if len(stale) > 0 {
		t.Errorf("on a Redis that refuses writes (%s):\n%s", reply, strings.Join(stale, "\n"))
	}
}
