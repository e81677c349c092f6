package batch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every caller gets its own response, whether it went alone or in a batch; under many
// concurrent callers batches form, and neither MaxInFlight nor MaxBatch is exceeded.
func TestConcurrentCallersGetTheirOwnResponses(t *testing.T) {
	var inFlight, maxInFlight, maxSize, batched, observed atomic.Int64
	b := New(func(_ context.Context, reqs []int) ([]int, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		for m := maxSize.Load(); int64(len(reqs)) > m && !maxSize.CompareAndSwap(m, int64(len(reqs))); m = maxSize.Load() {
		}
		if len(reqs) > 1 {
			batched.Add(1)
		}
		time.Sleep(200 * time.Microsecond) // a round trip
		out := make([]int, len(reqs))
		for i, r := range reqs {
			out[i] = r * 2
		}
		return out, nil
	}, Config{MaxInFlight: 2, MaxBatch: 8, Observe: func(size int) { observed.Add(int64(size)) }})

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				req := g*1000 + i
				if got, err := b.Do(context.Background(), req); err != nil || got != req*2 {
					errs <- fmt.Errorf("request %d: got %d, %v", req, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if batched.Load() == 0 {
		t.Error("64 concurrent callers never shared a batch")
	}
	if maxInFlight.Load() > 2 || maxSize.Load() > 8 {
		t.Errorf("%d batches in flight at once (max 2), a batch of %d (max 8)", maxInFlight.Load(), maxSize.Load())
	}
	if b.inFlight != 0 || len(b.queue) != 0 {
		t.Errorf("after the calls: %d in flight, %d queued", b.inFlight, len(b.queue))
	}
	if observed.Load() != 64*50 {
		t.Errorf("Observe saw batches of %d calls in all, want %d", observed.Load(), 64*50)
	}
}

// holdSlot makes the next call queue: a batch is "in flight" until release is closed.
func holdSlot(t *testing.T, b *Batcher[int, int], release chan struct{}) {
	t.Helper()
	b.mu.Lock()
	b.inFlight = b.cfg.MaxInFlight
	b.mu.Unlock()
	go func() {
		<-release
		b.mu.Lock()
		b.inFlight--
		b.mu.Unlock()
	}()
}

func double(_ context.Context, reqs []int) ([]int, error) {
	out := make([]int, len(reqs))
	for i, r := range reqs {
		out[i] = r * 2
	}
	return out, nil
}

// A caller that gives up while queued leaves the queue at once with its context's error, and
// the queue does not send it later.
func TestCallerGivesUpWhileQueued(t *testing.T) {
	var sent atomic.Int64
	b := New(func(ctx context.Context, reqs []int) ([]int, error) {
		sent.Add(int64(len(reqs)))
		return double(ctx, reqs)
	}, Config{})
	release := make(chan struct{})
	holdSlot(t, b, release)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := b.Do(ctx, 7); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued call: %v, want its deadline", err)
	}
	if len(b.queue) != 0 {
		t.Fatalf("%d calls left in the queue", len(b.queue))
	}
	close(release)
	for b.inFlightNow() != 0 {
		time.Sleep(time.Millisecond)
	}
	if got, err := b.Do(context.Background(), 8); err != nil || got != 16 {
		t.Fatalf("next call: %d, %v", got, err)
	}
	if sent.Load() != 1 {
		t.Fatalf("%d requests sent, want only the last one", sent.Load())
	}
}

func (b *Batcher[Req, Resp]) inFlightNow() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight
}

// queueUp starts n callers behind a held slot and waits until all are queued.
func queueUp(t *testing.T, b *Batcher[int, int], n int) <-chan error {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			got, err := b.Do(context.Background(), i)
			if err == nil && got != i*2 {
				err = fmt.Errorf("request %d: got %d", i, got)
			}
			errs <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		queued := len(b.queue)
		b.mu.Unlock()
		if queued == n {
			return errs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callers queued", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// When a batch fails with an error FailQueued accepts (the server is gone), the calls queued
// behind it get that error at once, wrapped in ErrAheadFailed, instead of each trying again.
func TestFailureFailsTheQueue(t *testing.T) {
	gone := errors.New("server gone")
	var execs atomic.Int64
	b := New(func(context.Context, []int) ([]int, error) {
		execs.Add(1)
		return nil, gone
	}, Config{FailQueued: func(err error) bool { return errors.Is(err, gone) }})
	b.inFlight = 1 // the leader below holds the slot
	errs := queueUp(t, b, 3)
	leader := &call[int, int]{req: 9}
	b.send(context.Background(), []*call[int, int]{leader})
	if !errors.Is(leader.err, gone) {
		t.Fatalf("leader: %v", leader.err)
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrAheadFailed) || !errors.Is(err, gone) {
			t.Fatalf("a queued call got %v, want ErrAheadFailed wrapping %v", err, gone)
		}
	}
	if execs.Load() != 1 || b.inFlight != 0 || len(b.queue) != 0 {
		t.Fatalf("after the failure: %d execs, %d in flight, %d queued", execs.Load(), b.inFlight, len(b.queue))
	}
}

// An error FailQueued does not accept (say, one bad request in the batch) fails that batch
// only: the queued calls are sent as the next batch and succeed.
func TestOtherFailureSendsTheQueue(t *testing.T) {
	bad := errors.New("bad request in the batch")
	b := New(func(ctx context.Context, reqs []int) ([]int, error) {
		if reqs[0] == 9 {
			return nil, bad
		}
		return double(ctx, reqs)
	}, Config{FailQueued: func(err error) bool { return false }})
	b.inFlight = 1
	errs := queueUp(t, b, 3)
	leader := &call[int, int]{req: 9}
	b.send(context.Background(), []*call[int, int]{leader})
	if !errors.Is(leader.err, bad) {
		t.Fatalf("leader: %v", leader.err)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// An Exec that answers the wrong number of responses, or panics, fails its batch with an
// error; the Batcher stays usable (a panic must not leave its slot taken forever).
func TestBrokenExec(t *testing.T) {
	var mode atomic.Int64
	b := New(func(ctx context.Context, reqs []int) ([]int, error) {
		switch mode.Load() {
		case 1:
			return []int{1, 2, 3}, nil
		case 2:
			panic("boom")
		}
		return double(ctx, reqs)
	}, Config{})
	mode.Store(1)
	if _, err := b.Do(context.Background(), 1); err == nil {
		t.Fatal("3 responses for 1 request: no error")
	}
	mode.Store(2)
	if _, err := b.Do(context.Background(), 1); err == nil {
		t.Fatal("a panicking exec: no error")
	}
	mode.Store(0)
	if got, err := b.Do(context.Background(), 4); err != nil || got != 8 {
		t.Fatalf("after the failures: %d, %v", got, err)
	}
}

// gatedExec is an Exec that reports each batch's size on started and then waits for a value
// on gate: "panic" panics, anything else answers each request doubled.
func gatedExec(started chan<- int, gate <-chan string) Exec[int, int] {
	return func(ctx context.Context, reqs []int) ([]int, error) {
		started <- len(reqs)
		if <-gate == "panic" {
			panic("boom")
		}
		return double(ctx, reqs)
	}
}

// A caller whose batch has been sent keeps waiting for it even when its context ends: the
// request may have been carried out, so it gets the batch's answer, and the batch still
// answers the others.
func TestCallerInSentBatchGetsItsAnswer(t *testing.T) {
	started, gate := make(chan int, 4), make(chan string)
	b := New(gatedExec(started, gate), Config{})
	first := make(chan error, 1)
	go func() { _, err := b.Do(context.Background(), 1); first <- err }()
	<-started // the first call holds the slot
	type answer struct {
		v   int
		err error
	}
	lead, member := make(chan answer, 1), make(chan answer, 1)
	go func() { v, err := b.Do(context.Background(), 2); lead <- answer{v, err} }()
	for b.Queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { v, err := b.Do(ctx, 3); member <- answer{v, err} }()
	for b.Queued() != 2 {
		time.Sleep(time.Millisecond)
	}
	gate <- "ok"
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := <-started; n != 2 {
		t.Fatalf("second batch of %d, want the two queued calls", n)
	}
	cancel() // the member hangs up while its batch is in flight
	time.Sleep(10 * time.Millisecond)
	gate <- "ok"
	if a := <-member; a.err != nil || a.v != 6 {
		t.Fatalf("member that hung up during its batch: %d, %v; want the batch's answer 6", a.v, a.err)
	}
	if a := <-lead; a.err != nil || a.v != 4 {
		t.Fatalf("leader: %d, %v", a.v, a.err)
	}
}

// The calls queued behind a batch whose Exec panicked are sent as the next batch (the slot is
// passed on, not lost) and answered.
func TestQueueServedAfterPanic(t *testing.T) {
	started, gate := make(chan int, 4), make(chan string)
	b := New(gatedExec(started, gate), Config{})
	first := make(chan error, 1)
	go func() { _, err := b.Do(context.Background(), 1); first <- err }()
	<-started
	queued := make(chan error, 2)
	for i := range 2 {
		go func() {
			v, err := b.Do(context.Background(), 10+i)
			if err == nil && v != 2*(10+i) {
				err = fmt.Errorf("got %d for %d", v, 10+i)
			}
			queued <- err
		}()
	}
	for b.Queued() != 2 {
		time.Sleep(time.Millisecond)
	}
	gate <- "panic"
	if err := <-first; err == nil {
		t.Fatal("the panicking batch's caller got no error")
	}
	<-started
	gate <- "ok"
	for range 2 {
		if err := <-queued; err != nil {
			t.Fatal(err)
		}
	}
}
