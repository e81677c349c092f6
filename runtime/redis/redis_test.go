package redis_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/redis"
	"github.com/findmy/trading-operator/runtime/redis/redistest"
)

func open(t *testing.T, url, prefix string) *redis.Client {
	t.Helper()
	c, err := redis.OpenWith(url, redis.Options{Prefix: prefix, PingInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOpenRejectsMalformedURL(t *testing.T) {
	if _, err := redis.Open("http://nope"); err == nil {
		t.Fatal("a non-redis URL was accepted")
	}
}

// go-redis's own diagnostics (here: a dial that failed) reach the service's logger as
// structured lines, not as the standard logger's plain text (LOG_FORMAT=json holds for
// every line).
func TestLibraryLogsAreStructured(t *testing.T) {
	var buf syncBuffer
	redis.LogLibraryTo(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { redis.LogLibraryTo(slog.Default()) })

	l, err := net.Listen("tcp", "127.0.0.1:0") // a port nobody listens on once closed
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Fatal("ping of a closed port succeeded")
	}
	out := buf.String()
	if out == "" {
		t.Fatal("go-redis logged nothing for a failed dial")
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec struct{ Level, Msg, Component string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level != "WARN" || rec.Component != "go-redis" || !strings.Contains(rec.Msg, "dial") {
			t.Errorf("go-redis log line %q is not a structured warning about the dial (%v)", line, err)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStoreRoundTrip(t *testing.T) {
	c := open(t, redistest.SharedURL(t), redistest.Prefix(t))
	ctx := context.Background()
	v, _, ok, err := c.GetVersioned(ctx, "ver", "k")
	if err != nil || ok {
		t.Fatalf("Get of a missing key: ok=%v err=%v", ok, err)
	}
	if err := c.SetVersioned(ctx, "k", v, []byte(`{"a":1}`), time.Minute); err != nil {
		t.Fatal(err)
	}
	_, b, ok, err := c.GetVersioned(ctx, "ver", "k")
	if err != nil || !ok || string(b) != `{"a":1}` {
		t.Fatalf("Get = %q %v %v", b, ok, err)
	}
	// Stats counts the stored value: the version it was stored under, a space, the bytes.
	n, size, err := c.Stats(ctx, "k", 1000)
	if err != nil || n != 1 || size != int64(len(strconv.FormatInt(v, 10)+` {"a":1}`)) {
		t.Fatalf("Stats = %d entries %d bytes, %v", n, size, err)
	}
	if err := c.Bump(ctx, "ver"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := c.GetVersioned(ctx, "ver", "k"); ok {
		t.Fatal("a value of the old version is still served after a bump")
	}
}

// An invalidation returns only after every subscribed replica ran its handler, and a
// subscription that comes back after an outage calls onSubscribe again (the L1 flush).
func TestInvalidationAcknowledgedAndResubscribed(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	a, b := open(t, srv.URL(), prefix), open(t, srv.URL(), prefix)

	var subsA, subsB atomic.Int32
	var mu sync.Mutex
	seenB := map[uuid.UUID]trading.Views{}
	symbolsB := map[uuid.UUID]string{}
	var seenA atomic.Int32
	stopA := a.SubscribeInvalidations(func() { subsA.Add(1) }, func() {}, func(uuid.UUID, trading.Views, string) { seenA.Add(1) })
	defer stopA()
	stopB := b.SubscribeInvalidations(func() { subsB.Add(1) }, func() {}, func(u uuid.UUID, v trading.Views, symbol string) {
		time.Sleep(20 * time.Millisecond) // a slow handler: the publisher must wait for it
		mu.Lock()
		seenB[u], symbolsB[u] = v, symbol
		mu.Unlock()
	})
	defer stopB()
	redistest.Eventually(t, 5*time.Second, "both subscriptions", func() bool { return subsA.Load() >= 1 && subsB.Load() >= 1 })

	user := uuid.New()
	if err := a.PublishInvalidation(context.Background(), user, trading.ViewSummary, ""); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got, symbol := seenB[user], symbolsB[user]
	mu.Unlock()
	if got == 0 {
		t.Fatal("PublishInvalidation returned before the other replica handled the message")
	}
	if got != trading.ViewSummary || symbol != "" {
		t.Fatalf("the other replica was told views %b and symbol %q, want the summary only (%b) and no symbol", got, symbol, trading.ViewSummary)
	}
	// A trade's invalidation carries its symbol, whose mark moved.
	trader := uuid.New()
	if err := a.PublishInvalidation(context.Background(), trader, trading.AllViews, "ETH/USD"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got, symbol = seenB[trader], symbolsB[trader]
	mu.Unlock()
	if got != trading.AllViews || symbol != "ETH/USD" {
		t.Fatalf("after a trade the other replica was told views %b and symbol %q, want %b and ETH/USD", got, symbol, trading.AllViews)
	}
	if n := seenA.Load(); n != 0 {
		t.Fatalf("the publisher's own handler ran %d times: it drops its entries itself, before publishing", n)
	}

	before := subsB.Load()
	srv.Stop()
	redistest.Eventually(t, 5*time.Second, "degraded health", func() bool { return !a.Healthy() && !b.Healthy() })
	if err := a.PublishInvalidation(context.Background(), user, trading.AllViews, ""); err == nil {
		t.Fatal("publishing with Redis down reported success")
	}
	srv.Restart()
	redistest.Eventually(t, 10*time.Second, "recovery", func() bool { return a.Healthy() && b.Healthy() })
	redistest.Eventually(t, 10*time.Second, "resubscription", func() bool { return subsB.Load() > before })
	if err := a.PublishInvalidation(context.Background(), uuid.New(), trading.AllViews, "BTC/USD"); err != nil {
		t.Fatalf("publish after recovery: %v", err)
	}
}

// Two deployments sharing one Redis through different databases (no key prefix) do not
// hear each other's invalidations: pub/sub ignores the database, and a foreign subscriber
// counted among the receivers would make every invalidation wait out AckTimeout for an
// acknowledgement that goes to the other database.
func TestInvalidationsStayInTheirDatabase(t *testing.T) {
	srv := redistest.Start(t)
	base := strings.TrimSuffix(srv.URL(), "/0")
	var subscribed [3]atomic.Int32
	var heard [3]atomic.Int32
	clients := make([]*redis.Client, 3)
	for db := range clients {
		clients[db] = open(t, base+"/"+strconv.Itoa(db), "")
		stop := clients[db].SubscribeInvalidations(func() { subscribed[db].Add(1) }, func() {},
			func(uuid.UUID, trading.Views, string) { heard[db].Add(1) })
		defer stop()
	}
	redistest.Eventually(t, 5*time.Second, "subscriptions", func() bool {
		return subscribed[0].Load() >= 1 && subscribed[1].Load() >= 1 && subscribed[2].Load() >= 1
	})
	// A second replica of the deployment on database 1 does hear it.
	peer := open(t, base+"/1", "")
	// A subscriber of another database counted among the receivers would never acknowledge:
	// the publish would wait out AckTimeout and fail with ErrNotAcknowledged.
	for db, c := range []*redis.Client{clients[0], peer, clients[2]} {
		if err := c.PublishInvalidation(context.Background(), uuid.New(), trading.AllViews, ""); err != nil {
			t.Fatalf("database %d: %v", db, err)
		}
	}
	if got := [3]int32{heard[0].Load(), heard[1].Load(), heard[2].Load()}; got != [3]int32{0, 1, 0} {
		t.Fatalf("handlers ran %v times per database, want only database 1's, once (its peer published)", got)
	}
}

func TestDegradedOperationsFailFast(t *testing.T) {
	srv := redistest.Start(t)
	c := open(t, srv.URL(), redistest.Prefix(t))
	var changes []bool
	var mu sync.Mutex
	c.OnHealthChange(func(h bool) { mu.Lock(); changes = append(changes, h); mu.Unlock() })
	srv.Stop()
	_, _, _, err := c.GetVersioned(context.Background(), "v", "x")
	if err == nil {
		t.Fatal("Get with Redis down reported no error")
	}
	// A timeout starts a probe, a refused connection degrades at once: either way, soon.
	redistest.Eventually(t, 5*time.Second, "degraded after a failed Get", func() bool { return !c.Healthy() })
	if _, _, _, err := c.GetVersioned(context.Background(), "v", "x"); err != redis.ErrDegraded {
		t.Fatalf("Get while degraded = %v, want ErrDegraded without a round trip", err)
	}
	srv.Restart()
	redistest.Eventually(t, 10*time.Second, "recovery by the pinger", c.Healthy)
	if err := c.SetVersioned(context.Background(), "x", 0, []byte("1"), time.Minute); err != nil {
		t.Fatalf("Set after recovery: %v", err)
	}
	// Healthy() flips before the hooks run (on the pinger's goroutine): wait for the hook.
	redistest.Eventually(t, 5*time.Second, "the recovery reported to OnHealthChange", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(changes) >= 2 && changes[len(changes)-1]
	})
	mu.Lock()
	defer mu.Unlock()
	if changes[0] != false {
		t.Fatalf("health transitions = %v, want [false ... true]", changes)
	}
}

// A value is served only for the version it was stored under: after a bump, a value
// written late for the old version (a slow loader) is not found.
func TestVersionedValues(t *testing.T) {
	c := open(t, redistest.SharedURL(t), redistest.Prefix(t))
	ctx := context.Background()
	v, _, ok, err := c.GetVersioned(ctx, "ver", "val")
	// A missing counter starts at random, not at 0: a value from before a loss of Redis's
	// data must not meet its number again (runtime/cache's TestLostRedisDataDoesNotReviveAnOldBook).
	// The version is opaque (the counter mixed with the epoch, any int64): only 0, the
	// number every counter once started from, is out.
	if err != nil || ok || v == 0 {
		t.Fatalf("empty: version %d, ok %v, err %v", v, ok, err)
	}
	if again, _, _, err := c.GetVersioned(ctx, "ver", "val"); err != nil || again != v {
		t.Fatalf("the started counter reads %d, %v; want %d", again, err, v)
	}
	if err := c.SetVersioned(ctx, "val", v, []byte(`{"q":"1"}`), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, b, ok, err := c.GetVersioned(ctx, "ver", "val"); err != nil || !ok || string(b) != `{"q":"1"}` {
		t.Fatalf("stored for the current version: %q, %v, %v", b, ok, err)
	}
	if err := c.Bump(ctx, "ver"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVersioned(ctx, "val", v, []byte(`{"q":"old"}`), time.Minute); err != nil { // the late write
		t.Fatal(err)
	}
	v2, b, ok, err := c.GetVersioned(ctx, "ver", "val")
	if err != nil || ok || v2 != v+1 {
		t.Fatalf("after a bump: version %d (want %d), served %q (%v), err %v", v2, v+1, b, ok, err)
	}
}

// echoBatch is a batch script for the Batcher tests: per caller, its one argument and the
// number of callers in the batch. A random constant makes it new to Redis, so the first
// call meets NOSCRIPT.
func echoBatch() *goredis.Script {
	return goredis.NewScript(`
local out, a = {}, 1
local callers = 0
while a <= #ARGV do callers = callers + 1; a = a + 2 + tonumber(ARGV[a + 1]) end
a = 1
while a <= #ARGV do
  out[#out + 1], out[#out + 2] = tonumber(ARGV[a + 2]), callers
  a = a + 2 + tonumber(ARGV[a + 1])
end
return out -- ` + uuid.NewString() + `
`)
}

// Every caller of a Batcher gets its own reply, whether its script ran alone or batched with
// others (which it must be, under 64 concurrent callers), and a script Redis does not know
// yet is loaded.
func TestBatcherUnderConcurrency(t *testing.T) {
	// What is checked is that each caller gets its own answer and that calls share batches;
	// the production bound of one call (100 ms, against a hung Redis) is not: under the race
	// detector on two shared cores one batch of 64 callers took longer (a CI run), and the
	// callers queued behind it fail with it.
	c, err := redis.OpenWith(redistest.SharedURL(t), redis.Options{Prefix: redistest.Prefix(t), OpTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := c.NewBatcher(echoBatch(), 2)
	var (
		wg      sync.WaitGroup
		batched atomic.Bool
	)
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				want := int64(g*1000 + i)
				v, err := b.Run(context.Background(), []string{"k"}, want)
				if err != nil || len(v) != 2 || v[0] != want {
					errs <- fmt.Errorf("call %d: %v, %v", want, v, err)
					return
				}
				if v[1] > 1 {
					batched.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !batched.Load() {
		t.Fatal("64 concurrent callers never shared a script call")
	}
}

// An ended login reaches the other clients' OnSessionEnded handler before the publisher
// returns, and never their cache's invalidation handler; the publisher's own handler is not
// called (it recorded the login itself).
func TestSessionEndedAnnounced(t *testing.T) {
	url, prefix := redistest.SharedURL(t), redistest.Prefix(t)
	a, b := open(t, url, prefix), open(t, url, prefix)
	var subsA, subsB, invalidated, ownSeen atomic.Int32
	var mu sync.Mutex
	var heard []uuid.UUID
	b.OnSessionEnded(func(sid uuid.UUID) {
		time.Sleep(20 * time.Millisecond) // a slow replica: the publisher waits for it
		mu.Lock()
		heard = append(heard, sid)
		mu.Unlock()
	})
	a.OnSessionEnded(func(uuid.UUID) { ownSeen.Add(1) })
	stopA := a.SubscribeInvalidations(func() { subsA.Add(1) }, func() {}, func(uuid.UUID, trading.Views, string) {})
	defer stopA()
	stopB := b.SubscribeInvalidations(func() { subsB.Add(1) }, func() {}, func(uuid.UUID, trading.Views, string) { invalidated.Add(1) })
	defer stopB()
	redistest.Eventually(t, 5*time.Second, "both subscriptions", func() bool { return subsA.Load() >= 1 && subsB.Load() >= 1 })

	sid := uuid.New()
	if err := a.PublishSessionEnded(context.Background(), sid); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := append([]uuid.UUID(nil), heard...)
	mu.Unlock()
	if len(got) != 1 || got[0] != sid {
		t.Fatalf("the other client heard %v when the publish returned, want [%v]", got, sid)
	}
	if invalidated.Load() != 0 || ownSeen.Load() != 0 {
		t.Fatalf("cache invalidations %d, publisher's own handler %d: want 0 and 0", invalidated.Load(), ownSeen.Load())
	}
}

// LastAnswer moves with Redis's replies (error replies included) and only with them: not
// with a call whose caller gave up while Redis said nothing (a client that hung up during a
// pause must not keep the replicas' L1 trusted), nor with a timeout.
func TestLastAnswerOnlyOnReplies(t *testing.T) {
	srv := redistest.Start(t)
	c, err := redis.OpenWith(srv.URL(), redis.Options{Prefix: redistest.Prefix(t), PingInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := c.LastAnswer()
	if err := c.Redis().Do(context.Background(), "NOSUCHCOMMAND").Err(); err == nil {
		t.Fatal("an unknown command answered")
	}
	afterReply := c.LastAnswer()
	if !afterReply.After(before) {
		t.Fatalf("an error reply did not count as an answer: %v then %v", before, afterReply)
	}
	srv.Pause()
	defer srv.Resume()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, _, err := c.GetVersioned(ctx, "v", "x"); err == nil {
		t.Fatal("a Get answered while Redis is paused")
	}
	if _, _, _, err := c.GetVersioned(context.Background(), "v", "x"); err == nil {
		t.Fatal("a Get answered while Redis is paused")
	}
	if got := c.LastAnswer(); !got.Equal(afterReply) {
		t.Fatalf("LastAnswer moved to %v (from %v) without a reply", got, afterReply)
	}
}

// The cache's epoch (carried by every L2 value's version) moves after a silence to a new
// random number, never the old one plus one: a Redis that went back to older data (a crash
// losing the last second of its AOF, a failover to a lagging replica) would otherwise be
// moved on to exactly the epoch it lost, and a load that read its version then would store
// an old book under a version that matches again. And it never expires: expiring, it made
// every L2 value a miss at once, a week after the last outage.
func TestEpochMovesAtRandomAndStays(t *testing.T) {
	srv := redistest.Start(t)
	link := redistest.Slow(t, "127.0.0.1:"+strconv.Itoa(srv.Port))
	prefix := redistest.Prefix(t)
	c := open(t, link.URL(), prefix)
	admin := open(t, srv.URL(), "")
	ctx := context.Background()
	if _, _, _, err := c.GetVersioned(ctx, "ver", "val"); err != nil {
		t.Fatal(err)
	}
	epoch := func() int64 {
		t.Helper()
		v, err := admin.Redis().Get(ctx, prefix+"cache-epoch").Int64()
		if err != nil {
			t.Fatalf("epoch: %v", err)
		}
		if ttl := admin.Redis().TTL(ctx, prefix+"cache-epoch").Val(); ttl != -1 {
			t.Errorf("the epoch expires (TTL %v); want it kept", ttl)
		}
		return v
	}
	before := epoch()
	link.Cut()
	redistest.Eventually(t, 10*time.Second, "a silence (Options.Silence, 250 ms) without answers", func() bool {
		return !c.Healthy() && time.Since(c.LastAnswer()) > time.Second
	})
	link.Mend()
	redistest.Eventually(t, 10*time.Second, "the epoch moves once Redis answers again", func() bool {
		v, _ := admin.Redis().Get(ctx, prefix+"cache-epoch").Int64()
		return v != before
	})
	if after := epoch(); after == before+1 {
		t.Errorf("the epoch moved from %d to the next number; want a new random one", before)
	}
}

// A Redis that answers reads and PING but refuses writes (here a replica whose master does
// not answer: READONLY, with its data kept, as the old master after a failover) marks the
// client degraded at the first refused write, with Redis's reply as the reason, and keeps
// it degraded although every PING succeeds: an approve's version bump is refused there, and
// a cache that trusted its L1 and L2 again would serve the book from before it. Once a write
// goes through, the client is healthy again and that counts as the end of a silence: the
// epoch moves (no L2 value stored before is served) and the OnResume hooks run.
func TestRefusedWritesDegradeUntilAWriteGoesThrough(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + strconv.Itoa(srv.Port)})
	t.Cleanup(func() { admin.Close() })
	c := open(t, srv.URL(), redistest.Prefix(t))
	var resumes atomic.Int32
	c.OnResume(func() { resumes.Add(1) })
	version, _, _, err := c.GetVersioned(ctx, "v", "k")
	if err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0") // a master that never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := admin.Do(ctx, "REPLICAOF", "127.0.0.1", l.Addr().(*net.TCPAddr).Port).Err(); err != nil {
		t.Fatal(err)
	}
	err = c.Bump(ctx, "v")
	if err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("Bump on a replica: %v, want READONLY", err)
	}
	if c.Healthy() || !strings.Contains(c.Problem(), "READONLY") {
		t.Fatalf("after a refused write: healthy %v, problem %q; want degraded, saying READONLY", c.Healthy(), c.Problem())
	}
	time.Sleep(300 * time.Millisecond) // six pings, each answered
	if err := admin.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if c.Healthy() {
		t.Fatal("a PING that Redis answers made the client healthy while Redis still refuses writes")
	}
	if _, _, _, err := c.GetVersioned(ctx, "v", "k"); err != redis.ErrDegraded {
		t.Fatalf("GetVersioned while writes are refused: %v, want ErrDegraded", err)
	}

	before := resumes.Load()
	refusedUntil := time.Now()
	if err := admin.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, "healthy once Redis takes writes", c.Healthy)
	if !c.ResumedAt().After(refusedUntil) {
		t.Errorf("ResumedAt %v: taking writes again is not a new run of answers", c.ResumedAt())
	}
	redistest.Eventually(t, 5*time.Second, "the OnResume hooks", func() bool { return resumes.Load() > before })
	again, _, _, err := c.GetVersioned(ctx, "v", "k")
	if err != nil {
		t.Fatal(err)
	}
	if again == version {
		t.Error("the version is the one from before the refused writes: the epoch did not move")
	}
}

// A client that writes nothing (every rate limit off, reads served from the caches) still
// notices within a ping interval or so that Redis refuses writes, since its pinger checks
// with a write: READONLY answers PING. RefusalKnownBy says when every replica must have
// noticed (two ping intervals after this one did), and is cleared once writes go through.
func TestPingerNoticesRefusedWritesWithoutTraffic(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + strconv.Itoa(srv.Port)})
	t.Cleanup(func() { admin.Close() })
	c := open(t, srv.URL(), redistest.Prefix(t)) // pings every 50ms
	if !c.Healthy() || !c.RefusalKnownBy().IsZero() {
		t.Fatalf("at start: healthy %v, RefusalKnownBy %v; want healthy and zero", c.Healthy(), c.RefusalKnownBy())
	}
	l, err := net.Listen("tcp", "127.0.0.1:0") // a master that never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	refused := time.Now()
	if err := admin.Do(ctx, "REPLICAOF", "127.0.0.1", l.Addr().(*net.TCPAddr).Port).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 2*time.Second, "degraded by the pinger alone", func() bool { return !c.Healthy() })
	if d := time.Since(refused); d > 500*time.Millisecond {
		t.Errorf("the pinger took %v to notice refused writes (pings every 50ms)", d)
	}
	if !strings.Contains(c.Problem(), "READONLY") {
		t.Errorf("problem %q, want Redis's READONLY reply", c.Problem())
	}
	by := c.RefusalKnownBy()
	if by.Before(refused.Add(100*time.Millisecond)) || by.After(time.Now().Add(100*time.Millisecond)) {
		t.Errorf("RefusalKnownBy is %v after Redis began refusing writes, noticed within %v: want two ping intervals (100ms) past the moment the client noticed",
			by.Sub(refused), time.Since(refused))
	}
	if err := admin.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, "healthy once Redis takes writes", c.Healthy)
	if !c.RefusalKnownBy().IsZero() {
		t.Errorf("RefusalKnownBy %v once Redis takes writes, want zero", c.RefusalKnownBy())
	}
	if n, err := admin.Exists(ctx, redistest.Prefix(t)+"write-probe").Result(); err != nil || n != 0 {
		t.Errorf("the probe key exists (%d, %v): the probe must change nothing", n, err)
	}
}

// An ACL that does not let the client write its probe key (NOPERM) says nothing about Redis:
// the client stays healthy, checks with PING instead and says so once; a Redis that refuses
// writes is still noticed at a write of the client's own, and the next write that goes
// through ends it.
func TestForbiddenProbeKeyFallsBackToPing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + strconv.Itoa(srv.Port)})
	t.Cleanup(func() { admin.Close() })
	// Reads anywhere, writes only to the version counters.
	if err := admin.Do(ctx, "ACL", "SETUSER", "app", "on", ">secret", "+@all", "%R~*", "~p:v*").Err(); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	c, err := redis.OpenWith(fmt.Sprintf("redis://app:secret@127.0.0.1:%d/0", srv.Port), redis.Options{Prefix: "p:",
		PingInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	time.Sleep(300 * time.Millisecond) // six pings
	if !c.Healthy() {
		t.Fatalf("degraded by a probe key the ACL forbids: %s", c.Problem())
	}
	if n := strings.Count(logs.String(), "probe key"); n != 1 {
		t.Errorf("%d log lines about the forbidden probe key, want 1:\n%s", n, logs.String())
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := admin.Do(ctx, "REPLICAOF", "127.0.0.1", l.Addr().(*net.TCPAddr).Port).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Bump(ctx, "v"); err == nil || c.Healthy() {
		t.Fatalf("Bump on a replica: %v, healthy %v; want READONLY and degraded", err, c.Healthy())
	}
	if err := admin.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if c.Healthy() {
		t.Fatal("healthy again on PINGs alone, before any write went through")
	}
	if err := c.Bump(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if !c.Healthy() {
		t.Fatalf("still degraded after a write went through: %s", c.Problem())
	}
}

// lockedBuffer is a log destination that the pinger and the test may use at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
