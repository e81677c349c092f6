// Package batch combines concurrent calls of one operation into a single call of its batched
// form: the calls that arrive while earlier ones are in flight are queued and then sent
// together. Round trips to a server have a fixed cost (a statement to parse and plan, a
// transaction to commit, a script to start, system calls and wakeups on both sides) that a
// batch of N pays once.
//
// A call that finds a free slot goes straight to the server, so at low load nothing waits for
// anyone; a batch forms only while the slots are busy, and grows with the load. (An automatic
// pipeliner that always waits for the batch ahead made every call slower at low load.)
package batch

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// ErrAheadFailed wraps the error that the calls queued behind a failed batch get when Config.FailQueued
// says that error would most likely fail them too.
var ErrAheadFailed = errors.New("the batch ahead of this call failed")

// Exec runs one batch: it returns one response per request, in order, or an error for all of
// them. It runs under the context of the call that sends the batch (the first of it); a
// batch must not fail because that one caller gave up, so Exec should bound its work with
// context.WithoutCancel and a timeout of its own.
type Exec[Req, Resp any] func(ctx context.Context, reqs []Req) ([]Resp, error)

// Config shapes a Batcher.
type Config struct {
	// MaxInFlight is how many batches may be in flight at once (default 1). With one, batches
	// are the largest and a queued call waits at most about one batch; more gives more
	// parallelism on the server and smaller batches.
	MaxInFlight int
	// MaxBatch is the most calls in one batch (default 64); the rest wait for the next one.
	MaxBatch int
	// FailQueued, when it reports true for a batch's error, fails the calls queued behind it
	// at once (wrapping ErrAheadFailed and the error) instead of sending them one batch after
	// another to a server that is gone, each waiting out its timeout.
	FailQueued func(error) bool
	// Observe, when set, is told the size of every batch as it is sent (a metric: how much the
	// combining saves).
	Observe func(size int)
}

// Batcher combines concurrent calls. The zero value is not usable: use New.
type Batcher[Req, Resp any] struct {
	exec Exec[Req, Resp]
	cfg  Config

	mu       sync.Mutex
	inFlight int
	queue    []*call[Req, Resp]
}

type call[Req, Resp any] struct {
	req  Req
	resp Resp
	err  error
	// lead is set when this queued call is to send the batch (lead[0] is itself); done is
	// closed when the response is in (or, for a leader, when it is to send).
	lead []*call[Req, Resp]
	done chan struct{}
}

// New returns a Batcher of exec.
func New[Req, Resp any](exec Exec[Req, Resp], cfg Config) *Batcher[Req, Resp] {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 64
	}
	return &Batcher[Req, Resp]{exec: exec, cfg: cfg}
}

// Do runs req, alone when a slot is free, else in the next batch. ctx bounds the wait in the
// queue: a caller that gives up before its batch is sent leaves the queue with ctx's error;
// once its batch is sent it waits for the batch (which Exec bounds), so that a call the
// server may have carried out is never reported as not done.
func (b *Batcher[Req, Resp]) Do(ctx context.Context, req Req) (Resp, error) {
	c := &call[Req, Resp]{req: req}
	b.mu.Lock()
	if b.inFlight < b.cfg.MaxInFlight {
		b.inFlight++
		b.mu.Unlock()
		b.send(ctx, []*call[Req, Resp]{c})
		return c.resp, c.err
	}
	c.done = make(chan struct{})
	b.queue = append(b.queue, c)
	b.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		b.mu.Lock()
		for i, q := range b.queue {
			if q == c { // not taken into a batch yet: leave
				b.queue = append(b.queue[:i], b.queue[i+1:]...)
				b.mu.Unlock()
				var zero Resp
				return zero, ctx.Err()
			}
		}
		b.mu.Unlock()
		<-c.done // in a batch already, maybe as its sender: bounded by Exec
	}
	if c.lead != nil {
		b.send(ctx, c.lead)
	}
	return c.resp, c.err
}

// send runs one batch, hands every caller its response, and then either passes the slot to
// the first queued caller (which sends the queue as the next batch) or frees it.
func (b *Batcher[Req, Resp]) send(ctx context.Context, batch []*call[Req, Resp]) {
	err := b.run(ctx, batch)
	for _, c := range batch[1:] {
		close(c.done)
	}

	b.mu.Lock()
	if err != nil && b.cfg.FailQueued != nil && b.cfg.FailQueued(err) {
		queuedErr := fmt.Errorf("%w: %w", ErrAheadFailed, err)
		for _, c := range b.queue {
			c.err = queuedErr
			close(c.done)
		}
		b.queue = b.queue[:0]
	}
	if len(b.queue) == 0 {
		b.inFlight--
		b.mu.Unlock()
		return
	}
	n := min(len(b.queue), b.cfg.MaxBatch)
	next := make([]*call[Req, Resp], n)
	copy(next, b.queue)
	b.queue = append(b.queue[:0], b.queue[n:]...)
	b.mu.Unlock()
	next[0].lead = next
	close(next[0].done)
}

// run executes batch and stores each call's response or the batch's error.
func (b *Batcher[Req, Resp]) run(ctx context.Context, batch []*call[Req, Resp]) (err error) {
	reqs := make([]Req, len(batch))
	for i, c := range batch {
		reqs[i] = c.req
	}
	if b.cfg.Observe != nil {
		b.cfg.Observe(len(batch))
	}
	defer func() {
		// A panic here would leave the slot taken and every later call queued forever; the
		// batch's callers get it as an error instead (net/http would have recovered it for
		// the sender alone).
		if r := recover(); r != nil {
			err = fmt.Errorf("batch: exec panicked: %v\n%s", r, debug.Stack())
			for _, c := range batch {
				c.err = err
			}
		}
	}()
	resps, err := b.exec(ctx, reqs)
	if err == nil && len(resps) != len(batch) {
		err = fmt.Errorf("batch: %d responses for %d requests", len(resps), len(batch))
	}
	for i, c := range batch {
		if err != nil {
			c.err = err
			continue
		}
		c.resp = resps[i]
	}
	return err
}

// Queued is the number of calls waiting for a batch.
func (b *Batcher[Req, Resp]) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}
