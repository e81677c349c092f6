// Command bench load-tests tradingd against a real PostgreSQL and, in the same run, measures
// the baselines it is judged against: a bare net/http handler (the HTTP stack's limit on this
// machine) and single-row insert transactions through pgx with no HTTP (the database's limit).
// It prints requests/s and p50/p99 per scenario and the ratios of the API to the baselines.
//
// Run it with `make bench` (which builds bin/tradingd and provides DATABASE_URL).
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/findmy/trading-operator/runtime/postgres/pgtest"
)

var (
	duration = flag.Duration("duration", 5*time.Second, "how long each scenario runs at each concurrency")
	binary   = flag.String("tradingd", "bin/tradingd", "the tradingd binary")
	levels   = flag.String("clients", "16,64", "concurrent clients, comma separated")
	phase    = flag.String("phase", "all", "core (one replica, no Redis), mix (two replicas with Redis; ends with limiter), limiter (the cached read and the rate limiter's cost alone) or all")
	// PostgreSQL shares the two cores with everything else here: past a few busy backends it
	// spends its time switching between them. tradingd (DB_MAX_CONNS) and the raw baseline
	// get the same pool size, so that the ratios compare the work, not the pools.
	dbConns = flag.Int("db-conns", 8, "database connections of each tradingd replica and of the raw baseline")
	// The bench starts itself with -bare-server for the bare baseline: a process of its own,
	// like tradingd, so that both pay the same hop between processes.
	bareServer = flag.String("bare-server", "", "internal: serve the bare handler on this address")
)

// bareHandler is the baseline: 60 bytes of JSON from memory.
func bareHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"ok","message":"hello from the bare handler!!!"}` + "\n"))
}

// result is one scenario at one concurrency.
type result struct {
	name    string
	clients int
	n       int
	errors  int64
	elapsed time.Duration
	lat     []time.Duration
}

// line is r as one row of the report.
func (r result) line() string {
	return fmt.Sprintf("%-28s c=%-3d %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  (n=%d, errors=%d)",
		r.name, r.clients, r.rps(), ms(r.pct(0.50)), ms(r.pct(0.99)), r.n, r.errors)
}

func (r result) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[int(float64(len(r.lat)-1)*p)]
}

// load runs op from clients goroutines for the duration (or until op reports done) and
// records each successful call's latency.
func load(name string, clients int, d time.Duration, op func(worker int) (ok bool, done bool)) result {
	var (
		mu     sync.Mutex
		all    []time.Duration
		errs   atomic.Int64
		wg     sync.WaitGroup
		stop   atomic.Bool
		start  = time.Now()
		finish = start.Add(d)
	)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			for !stop.Load() && time.Now().Before(finish) {
				t0 := time.Now()
				ok, done := op(w)
				if done {
					stop.Store(true)
					break
				}
				if ok {
					lat = append(lat, time.Since(t0))
				} else {
					errs.Add(1)
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(all)
	return result{name: name, clients: clients, n: len(all), errors: errs.Load(), elapsed: elapsed, lat: all}
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *bareServer != "" {
		log.Fatal(http.ListenAndServe(*bareServer, http.HandlerFunc(bareHandler)))
	}
	ctx := context.Background()
	var clientLevels []int
	for _, s := range strings.Split(*levels, ",") {
		var n int
		_, err := fmt.Sscan(s, &n)
		must(err)
		clientLevels = append(clientLevels, n)
	}

	dsn, drop, err := pgtest.Create(ctx, pgtest.AdminURL(), "bench_")
	must(err)
	defer func() { _ = drop() }()

	// tradingd, as a separate process, exactly as it is deployed. Phase 1: one replica without
	// Redis and with rate limits off (0), so that it measures the request path alone.
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	jwtKeys := "JWT_KEYS=bench:" + base64.StdEncoding.EncodeToString(key)
	migrate := exec.Command(*binary, "migrate")
	migrate.Env, migrate.Stderr = append(os.Environ(), "DATABASE_URL="+dsn), os.Stderr
	must(migrate.Run())
	apiAddr, _, stopServe := startTradingd(dsn, jwtKeys, "", "0")
	defer stopServe()

	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}, Timeout: 10 * time.Second}
	base := "http://" + apiAddr
	trader := login(httpc, base, "trader1", "password123")
	// Orders come from both demo traders over the five default symbols, as a desk's would:
	// approvals of one user's one symbol serialize on that position's row lock by design,
	// so a single-position load would measure the lock, not the service.
	traders := []string{trader, login(httpc, base, "trader2", "password456")}
	symbols := []string{"BTC/USD", "ETH/USD", "BNB/USD", "XRP/USD", "ADA/USD"}
	var seq atomic.Int64
	risk := login(httpc, base, "risk1", "password789")

	// Baseline 1: a bare net/http handler answering 60 bytes of JSON from memory, in a
	// process of its own (this program, started with -bare-server).
	self, err := os.Executable()
	must(err)
	bareAddr := freePort()
	bare := exec.Command(self, "-bare-server", bareAddr)
	bare.Stderr = os.Stderr
	must(bare.Start())
	defer func() { _ = bare.Process.Kill(); _ = bare.Wait() }()
	waitReady("http://" + bareAddr + "/")

	// Baseline 2: single-row insert transactions through pgx, no HTTP.
	poolCfg, err := pgxpool.ParseConfig(dsn)
	must(err)
	poolCfg.MaxConns = int32(*dbConns)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	must(err)
	defer pool.Close()
	_, err = pool.Exec(ctx, `CREATE TABLE bench_insert (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
		symbol text NOT NULL, quantity numeric(20,8) NOT NULL, price numeric(20,8) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
	must(err)

	var results []result
	report := func(r result) {
		results = append(results, r)
		fmt.Println(r.line())
	}

	var orderIDs = make(chan string, 1_000_000)
	for _, c := range clientLevels {
		if *phase == "mix" || *phase == "limiter" {
			break
		}
		report(load("bare net/http", c, *duration, func(int) (bool, bool) {
			return get(httpc, "http://"+bareAddr+"/", "") == 200, false
		}))
		report(load("raw pgx insert tx", c, *duration, func(int) (bool, bool) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return false, false
			}
			_, err = tx.Exec(ctx, `INSERT INTO bench_insert (symbol, quantity, price) VALUES ($1, $2, $3)`, "BTC/USD", "1.5", "150.25")
			if err != nil {
				_ = tx.Rollback(ctx)
				return false, false
			}
			return tx.Commit(ctx) == nil, false
		}))
		report(load("POST /api/orders", c, *duration, func(int) (bool, bool) {
			i := seq.Add(1)
			body := fmt.Sprintf(`{"symbol":%q,"side":"buy","quantity":"1.5","price":"150.25"}`, symbols[i%int64(len(symbols))])
			status, resp := post(httpc, base+"/api/orders", traders[i%2], body)
			if status != 201 {
				return false, false
			}
			var o struct{ ID string }
			_ = json.Unmarshal(resp, &o)
			select {
			case orderIDs <- o.ID:
			default:
			}
			return true, false
		}))
		report(load("POST /api/orders/{id}/approve", c, *duration, func(int) (bool, bool) {
			select {
			case id := <-orderIDs:
				status, _ := post(httpc, base+"/api/orders/"+id+"/approve", risk, "")
				return status == 200, false
			default:
				return false, true // every pending order approved
			}
		}))
		report(load("GET /api/positions", c, *duration, func(int) (bool, bool) {
			return get(httpc, base+"/api/positions", trader) == 200, false
		}))
	}

	fmt.Println()
	find := func(name string, c int) result {
		for _, r := range results {
			if r.name == name && r.clients == c {
				return r
			}
		}
		return result{}
	}
	var mixLines []string
	if redisURL := os.Getenv("REDIS_URL"); redisURL != "" && *phase == "limiter" {
		apiA, _, stopA := startTradingd(dsn, jwtKeys, redisURL, "100000000")
		defer stopA()
		mixLines = limiterPhase(httpc, dsn, jwtKeys, redisURL, bareAddr, apiA, "trader1", "password123")
	} else if redisURL != "" && *phase != "core" {
		mixLines = mixPhase(httpc, dsn, jwtKeys, redisURL, bareAddr)
	}

	for _, c := range clientLevels {
		if *phase == "mix" || *phase == "limiter" {
			break
		}
		raw := find("raw pgx insert tx", c).rps()
		bareR := find("bare net/http", c).rps()
		fmt.Printf("c=%d  submit/raw insert %.2f (aim >= 0.50)  approve/raw insert %.2f (aim >= 0.33)  positions/bare %.2f  submit p99 %.2f ms\n",
			c, find("POST /api/orders", c).rps()/raw, find("POST /api/orders/{id}/approve", c).rps()/raw,
			find("GET /api/positions", c).rps()/bareR, ms(find("POST /api/orders", c).pct(0.99)))
	}
	for _, l := range mixLines {
		fmt.Println(l)
	}
}

// startTradingd starts `tradingd serve` on free ports and waits until it is ready. limit is
// the value of every RATE_LIMIT_* setting ("0": off); redisURL "" runs without Redis.
func startTradingd(dsn, jwtKeys, redisURL, limit string) (api, admin string, stop func()) {
	api, admin = freePort(), freePort()
	env := slices.DeleteFunc(os.Environ(), func(s string) bool { return strings.HasPrefix(s, "REDIS_URL=") })
	env = append(env, "DATABASE_URL="+dsn, jwtKeys, "LISTEN_ADDR="+api, "ADMIN_ADDR="+admin,
		"DEMO_USERS=true", "LOG_LEVEL=warn", // warnings: e.g. an invalidation that timed out
		"DB_MAX_CONNS="+strconv.Itoa(*dbConns),
		"RATE_LIMIT_LOGIN="+limit, "RATE_LIMIT_TRADING="+limit, "RATE_LIMIT_DATA="+limit,
		"RATE_LIMIT_GLOBAL_PER_MINUTE="+limit, "RATE_LIMIT_GLOBAL_PER_DAY="+limit)
	if redisURL != "" {
		env = append(env, "REDIS_URL="+redisURL)
	}
	serve := exec.Command(*binary, "serve")
	serve.Env, serve.Stderr = env, os.Stderr
	must(serve.Start())
	waitReady("http://" + admin + "/readyz")
	var once sync.Once
	return api, admin, func() { once.Do(func() { _ = serve.Process.Signal(syscall.SIGTERM); _ = serve.Wait() }) }
}

// mixPhase runs issue 3's read-heavy mix on two replicas sharing PostgreSQL and Redis, with
// rate limits on (high enough never to refuse, so that their cost is in every request):
// 90% GET positions/summary, 10% submit+approve, over 8 traders at 64 clients. The shares are
// of requests: one operation in 18 is a submission, its approval and the read-back below (a
// GET positions), the other 17 a GET: 2 writes in 20 requests. After each
// approve the trader's positions are read back from the OTHER replica: the quantity must
// include every trade of that trader whose approve had returned (a stale read otherwise).
func mixPhase(httpc *http.Client, dsn, jwtKeys, redisURL, bareAddr string) []string {
	const users, clients = 8, 64
	limit := "100000000"
	for i := range users {
		add := exec.Command(*binary, "user", "add", "--username", fmt.Sprintf("mix%d", i), "--role", "trader")
		add.Env = append(os.Environ(), "DATABASE_URL="+dsn)
		add.Stdin = strings.NewReader("mix-password\n")
		add.Stderr = os.Stderr
		must(add.Run())
	}
	apiA, adminA, stopA := startTradingd(dsn, jwtKeys, redisURL, limit)
	defer stopA()
	apiB, adminB, stopB := startTradingd(dsn, jwtKeys, redisURL, limit)
	defer stopB()
	replicas := []string{"http://" + apiA, "http://" + apiB}
	risk := login(httpc, replicas[0], "risk1", "password789")
	tokens := make([]string, users)
	for i := range users {
		tokens[i] = login(httpc, replicas[i%2], fmt.Sprintf("mix%d", i), "mix-password")
	}
	var committed [users]atomic.Int64 // per trader: quantity of trades whose approve returned
	var stale, checks, readErrors atomic.Int64
	var seq atomic.Int64

	var out []string
	report := func(r result) {
		out = append(out, r.line())
	}
	before := cacheCounters(httpc, adminA, adminB)
	mix := load("mix 90/10, 2 replicas", clients, 2**duration, func(w int) (bool, bool) {
		i := seq.Add(1)
		u := w % users
		rep := int((i / 5) % 2) // not correlated with the kind of request (i%2, i%18)
		switch {
		case i%18 != 0 && i%2 == 0:
			return get(httpc, replicas[rep]+"/api/positions", tokens[u]) == 200, false
		case i%18 != 0:
			return get(httpc, replicas[rep]+"/api/summary", tokens[u]) == 200, false
		}
		status, body := post(httpc, replicas[rep]+"/api/orders", tokens[u], `{"symbol":"BTC/USD","side":"buy","quantity":"1","price":"100"}`)
		if status != 201 {
			return false, false
		}
		var o struct{ ID string }
		_ = json.Unmarshal(body, &o)
		if status, _ := post(httpc, replicas[rep]+"/api/orders/"+o.ID+"/approve", risk, ""); status != 200 {
			return false, false
		}
		want := committed[u].Add(1)
		// Read back on the other replica.
		req, _ := http.NewRequest(http.MethodGet, replicas[1-rep]+"/api/positions", nil)
		req.Header.Set("Authorization", "Bearer "+tokens[u])
		resp, err := httpc.Do(req)
		if err != nil {
			return false, false
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			readErrors.Add(1)
			return false, false
		}
		var p struct{ Positions []struct{ Quantity string } }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		checks.Add(1)
		var got int64 // every trade here is 1 unit: the integer part is the count
		if len(p.Positions) == 1 {
			got, _ = strconv.ParseInt(strings.SplitN(p.Positions[0].Quantity, ".", 2)[0], 10, 64)
		}
		if got < want {
			stale.Add(1)
		}
		return true, false
	})
	report(mix)
	after := cacheCounters(httpc, adminA, adminB)
	l1h, l1m := after["l1 hit"]-before["l1 hit"], after["l1 miss"]-before["l1 miss"]
	l2h, l2m := after["l2 hit"]-before["l2 hit"], after["l2 miss"]-before["l2 miss"]
	out = append(out, fmt.Sprintf("mix cache: L1 hit rate %.1f%% (%d/%d), L2 hit rate on L1 misses %.1f%% (%d/%d), overall (L1 or L2) %.1f%%; read-backs after approve %d, stale %d, failed %d",
		100*l1h/max(1, l1h+l1m), int(l1h), int(l1h+l1m), 100*l2h/max(1, l2h+l2m), int(l2h), int(l2h+l2m),
		100*(l1h+l2h)/max(1, l1h+l1m), checks.Load(), stale.Load(), readErrors.Load()))
	for _, view := range []string{"positions", "summary"} {
		h1, m1 := after[view+" l1 hit"]-before[view+" l1 hit"], after[view+" l1 miss"]-before[view+" l1 miss"]
		h2 := after[view+" l2 hit"] - before[view+" l2 hit"]
		out = append(out, fmt.Sprintf("  %-9s lookups %6d: L1 %.1f%%, L1 or L2 %.1f%%", view, int(h1+m1), 100*h1/max(1, h1+m1), 100*(h1+h2)/max(1, h1+m1)))
	}

	stopB() // idle from here on: stop it so that it takes no CPU from the runs below
	return append(out, limiterPhase(httpc, dsn, jwtKeys, redisURL, bareAddr, apiA, "mix0", "mix-password")...)
}

// limiterPhase measures the cached read and the rate limiter's cost: cached positions on
// one replica against the bare handler, both at 64 clients, on replica apiA (Redis, limits
// on) and on a replica C it starts with Redis and limits off. `-phase limiter` runs it alone.
func limiterPhase(httpc *http.Client, dsn, jwtKeys, redisURL, bareAddr, apiA, user, password string) []string {
	const clients = 64
	var out []string
	report := func(r result) {
		out = append(out, r.line())
	}
	apiC, _, stopC := startTradingd(dsn, jwtKeys, redisURL, "0")
	defer stopC()
	limited, unlimited := "http://"+apiA+"/api/positions", "http://"+apiC+"/api/positions"
	tokenA := login(httpc, "http://"+apiA, user, password)
	// Three rounds of the three, one after the other, so that drift in the machine (the
	// database vacuuming after the mix, a noisy neighbour) hits each of them; the ratios are
	// taken within each round and the median round is reported.
	type round struct{ bare, on, off result }
	var rounds []round
	for range 3 {
		var r round
		r.bare = load("bare net/http", clients, *duration/2, func(int) (bool, bool) {
			return get(httpc, "http://"+bareAddr+"/", "") == 200, false
		})
		r.on = load("GET /api/positions cached", clients, *duration/2, func(int) (bool, bool) {
			return get(httpc, limited, tokenA) == 200, false
		})
		r.off = load("  same, rate limits off", clients, *duration/2, func(int) (bool, bool) {
			return get(httpc, unlimited, tokenA) == 200, false
		})
		rounds = append(rounds, r)
	}
	slices.SortFunc(rounds, func(a, b round) int { return cmp.Compare(a.on.rps()/a.bare.rps(), b.on.rps()/b.bare.rps()) })
	med := rounds[1]
	report(med.bare)
	report(med.on)
	report(med.off)
	ratios := func(f func(round) float64) string {
		var v []string
		for _, r := range rounds {
			v = append(v, fmt.Sprintf("%.2f", f(r)))
		}
		return strings.Join(v, " ")
	}
	out = append(out, fmt.Sprintf("cached positions/bare at c=%d: %.2f with Redis rate limits, %.2f without (aim >= 0.50); rounds: with %s, without %s",
		clients, med.on.rps()/med.bare.rps(), med.off.rps()/med.bare.rps(),
		ratios(func(r round) float64 { return r.on.rps() / r.bare.rps() }), ratios(func(r round) float64 { return r.off.rps() / r.bare.rps() })))

	// The limiter's cost at p50: the same cached read with limits on (A) and off (C), both
	// with Redis, in alternating rounds so that drift in the machine hits both; the median
	// of the rounds. One client is the latency a request gains; 16 also show the CPU cost
	// under load (a saturated machine turns CPU into queueing).
	for _, c := range []int{1, 16} {
		var on, off []time.Duration
		var rpsOn, rpsOff []float64
		for range 3 {
			r := load("limits on", c, *duration/2, func(int) (bool, bool) { return get(httpc, limited, tokenA) == 200, false })
			on, rpsOn = append(on, r.pct(0.5)), append(rpsOn, r.rps())
			r = load("limits off", c, *duration/2, func(int) (bool, bool) { return get(httpc, unlimited, tokenA) == 200, false })
			off, rpsOff = append(off, r.pct(0.5)), append(rpsOff, r.rps())
		}
		slices.Sort(on)
		slices.Sort(off)
		slices.Sort(rpsOn)
		slices.Sort(rpsOff)
		out = append(out, fmt.Sprintf("rate limits with Redis, c=%-2d: p50 %.3f ms on vs %.3f ms off: %+.3f ms (aim < 0.30); %.0f vs %.0f req/s (medians of 3 alternating rounds)",
			c, ms(on[1]), ms(off[1]), ms(on[1])-ms(off[1]), rpsOn[1], rpsOff[1]))
	}
	// And at a fixed arrival rate below the capacity of both (open loop, as traffic arrives:
	// latency is measured from each request's scheduled start, so a stall is not hidden).
	const rate = 3000
	var on, off []time.Duration
	for range 3 {
		on = append(on, openLoop(rate, *duration/2, func() bool { return get(httpc, limited, tokenA) == 200 }).pct(0.5))
		off = append(off, openLoop(rate, *duration/2, func() bool { return get(httpc, unlimited, tokenA) == 200 }).pct(0.5))
	}
	slices.Sort(on)
	slices.Sort(off)
	out = append(out, fmt.Sprintf("rate limits with Redis at %d req/s (open loop): p50 %.3f ms on vs %.3f ms off: %+.3f ms (aim < 0.30; medians of 3 alternating rounds)",
		rate, ms(on[1]), ms(off[1]), ms(on[1])-ms(off[1])))
	return out
}

// openLoop starts op at a fixed rate for d, whatever the earlier calls are doing, and
// records each call's latency from the moment it was due.
func openLoop(rate int, d time.Duration, op func() bool) result {
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= d {
			break
		}
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := op()
			l := time.Since(due)
			if !ok {
				errs.Add(1)
				return
			}
			mu.Lock()
			lat = append(lat, l)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	return result{name: "open loop", n: len(lat), errors: errs.Load(), elapsed: time.Since(start), lat: lat}
}

// cacheCounters sums cache_hits_total and cache_misses_total by level over both replicas.
func cacheCounters(c *http.Client, admins ...string) map[string]float64 {
	sums := map[string]float64{}
	for _, a := range admins {
		resp, err := c.Get("http://" + a + "/metrics")
		must(err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			var kind string
			switch {
			case strings.HasPrefix(line, "cache_hits_total{"):
				kind = "hit"
			case strings.HasPrefix(line, "cache_misses_total{"):
				kind = "miss"
			default:
				continue
			}
			level := "l1"
			if strings.Contains(line, `cache_level="l2"`) {
				level = "l2"
			}
			view := "positions"
			if strings.Contains(line, `"summary"`) {
				view = "summary"
			}
			var v float64
			_, _ = fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sums[level+" "+kind] += v
			sums[view+" "+level+" "+kind] += v
		}
	}
	return sums
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func waitReady(u string) {
	for range 200 {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("tradingd did not become ready at %s", u)
}

func login(c *http.Client, base, user, pass string) string {
	status, body := post(c, base+"/api/auth/login", "", fmt.Sprintf(`{"username":%q,"password":%q}`, user, pass))
	if status != 200 {
		log.Fatalf("login %s: %d %s", user, status, body)
	}
	var t struct {
		AccessToken string `json:"access_token"`
	}
	must(json.Unmarshal(body, &t))
	return t.AccessToken
}

func post(c *http.Client, u, token, body string) (int, []byte) {
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewBufferString(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func get(c *http.Client, u, token string) int {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
