package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	trading "github.com/findmy/trading-operator/runtime"
)

// Approvals, like submissions, are combined while others are in flight (package batch): the
// approvals of one batch execute in one transaction in two round trips, where each would
// otherwise take a transaction of its own. A single approval is a batch of one.
//
// In the batch's transaction, first round trip:
//  1. the batch's orders are locked in id order (SELECT ... ORDER BY id FOR UPDATE), so two
//     batches sharing orders (two replicas serving the same retried approvals) wait for each
//     other in the same order instead of deadlocking;
//  2. one upsert locks the positions of the orders that will be decided (pending, not the
//     approver's own, the approver still risk or admin), creating the missing ones, in (user, symbol) order: orders first, then
//     positions, each in a fixed order, so no batch waits for another in a cycle;
//  3. one conditional UPDATE decides those orders, exactly as decideSQL does for one. It runs
//     with every position held, so the decision times of a position's trades follow the order
//     in which they are applied to it, across batches too; the orders it does not decide (not
//     found, not pending, the approver's own, or a second approval of an order already in the
//     batch) are tried again alone afterwards, which answers each of them as a single approval
//     would (whyNotDecided: 404, 403, 409; or approved when it still could be).
//
// Then the trades are applied in Go (trading.ApplyTrade, execute) in decision order, each
// from the position the previous one left, and the second round trip inserts the trades,
// writes each position's final values and commits.
//
// When the server refuses a statement (a deadlock or a lock not granted in time, say),
// nothing was committed and every approval of the batch is retried alone, so none is lost and
// each gets its own answer. Locks are waited for at most lockTimeout: a row held by a stuck
// transaction elsewhere fails the approvals that need it, with 503, not the whole queue.
//
// Two batches in flight, so that one waiting for a lock does not hold up every approval of
// the replica. (One in flight made larger batches and ran faster on the 2-core machine with one
// replica: 0.47-0.49 of the raw insert rate at 16 clients against 0.38-0.40.)
const (
	approvalsInFlight = 2
	maxApprovalBatch  = 32
)

// approval is one call of ApproveOrder: the order and who approves it (already known to
// hold a role that may decide).
type approval struct {
	orderID  uuid.UUID
	approver trading.Principal
}

// approved is the outcome of an approval: the order and its trade, or err.
type approved struct {
	order *trading.Order
	trade *trading.Trade
	err   error
}

// approveBatch executes a batch of approvals (see above).
func (s *OrderService) approveBatch(ctx context.Context, batch []approval) ([]approved, error) {
	// The batch is shared: it must not fail because the caller that sends it hung up.
	detached := context.WithoutCancel(ctx)
	out := make([]approved, len(batch))
	alone := make([]bool, len(batch))
	if len(batch) == 1 {
		alone[0] = true
	} else {
		ctx, cancel := s.db.bound(detached)
		err := s.approveTogether(ctx, batch, out, alone, batchLockTimeout)
		cancel()
		if err != nil && !refusedByServer(err) {
			// The database is down, or the outcome is unknown (an error after COMMIT was
			// sent): the approvals get the error (503), never a second execution.
			return nil, err
		}
		if err != nil {
			clear(out)
			for i := range alone {
				alone[i] = true
			}
		}
	}
	// The approvals answered alone run in parallel, each in its own transaction and time: one
	// waiting for a row a stuck transaction holds (until lockTimeout) must not hold up the rest.
	var wg sync.WaitGroup
	for i, a := range batch {
		if alone[i] {
			wg.Go(func() {
				ctx, cancel := s.db.bound(detached)
				defer cancel()
				out[i] = s.approveOne(ctx, a)
			})
		}
	}
	wg.Wait()
	if len(batch) == 1 && databaseDown(out[0].err) {
		return nil, out[0].err // the queued approvals fail with it (batch.Config.FailQueued)
	}
	return out, nil
}

// approveOne is a batch of one: the approval, or why the order could not be approved.
func (s *OrderService) approveOne(ctx context.Context, a approval) approved {
	out, alone := make([]approved, 1), make([]bool, 1)
	if err := s.approveTogether(ctx, []approval{a}, out, alone, lockTimeout); err != nil {
		return approved{err: err}
	}
	if alone[0] {
		return approved{err: whyNotDecided(ctx, s.db.pool, a.approver, a.orderID)}
	}
	return out[0]
}

type positionKey struct {
	user   uuid.UUID
	symbol string
}

// approveTogether runs the batch's transaction. It fills out for the approvals it executed
// and sets alone for the others. On error nothing was committed, unless the error is a
// *commitUnknown (a COMMIT whose answer was lost; the views it would change are dropped all
// the same). A transaction refused for a statement that a schema change outdated runs once
// more, after a reset of the pool (see stale.go).
func (s *OrderService) approveTogether(ctx context.Context, batch []approval, out []approved, alone []bool, lockWait time.Duration) error {
	err := s.approveTogetherOnce(ctx, batch, out, alone, lockWait)
	if staleStatement(err) {
		s.db.pool.Reset()
		clear(out)
		clear(alone)
		err = s.approveTogetherOnce(ctx, batch, out, alone, lockWait)
	}
	return err
}

func (s *OrderService) approveTogetherOnce(ctx context.Context, batch []approval, out []approved, alone []bool, lockWait time.Duration) error {
	conn, err := s.db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = approveTogether(ctx, conn.Conn(), batch, out, alone, lockWait)
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		rctx, cancel := s.db.bound(context.WithoutCancel(ctx))
		_, _ = conn.Exec(rctx, "ROLLBACK")
		cancel()
	}
	// The trades may have been committed: drop the cached views they would have changed
	// before the approvals answer 503, as a success would (a needless reload if they were
	// not). Else a retried approval's 409 and the order reading approved came with positions
	// that lacked the trade until the cache entry expired.
	var unknown *commitUnknown
	if errors.As(err, &unknown) {
		for _, o := range unknown.decided {
			s.invalidateTrade(ctx, o.RequestedBy, o.Symbol)
		}
	}
	return err
}

// commitUnknown is an error after the COMMIT of approvals that decided orders was sent,
// other than the server refusing a statement (which rolls back): the connection failed or
// the time ran out, and the trades may or may not have been committed.
type commitUnknown struct {
	err     error
	decided []*trading.Order
}

func (e *commitUnknown) Error() string { return e.err.Error() }
func (e *commitUnknown) Unwrap() error { return e.err }

func approveTogether(ctx context.Context, conn *pgx.Conn, batch []approval, out []approved, alone []bool, lockWait time.Duration) error {
	// The first approval of each order goes into the UPDATE; a second one of the same order
	// is answered alone afterwards (409 once the first has approved it).
	first := make(map[uuid.UUID]int, len(batch))
	ids := make([]uuid.UUID, 0, len(batch))
	approvers := make([]uuid.UUID, 0, len(batch))
	for i, a := range batch {
		if _, dup := first[a.orderID]; dup {
			alone[i] = true
			continue
		}
		first[a.orderID] = i
		ids = append(ids, a.orderID)
		approvers = append(approvers, a.approver.UserID)
	}

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(setLockTimeout, lockTimeoutSetting(ctx, lockWait))
	// The deciders' rows first, shared: the upsert and the UPDATE below each check the
	// decider's roles (deciderMayDecide) in a snapshot of their own, and a role change
	// committed between them made them disagree (a position locked and created for an order
	// not decided, or an order decided whose position was not locked). A change of roles now
	// waits for the batch. Order inserts and the decisions' foreign keys take KEY SHARE on
	// users, which this does not block.
	b.Queue(`SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE`, approvers)
	b.Queue(`SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
	b.Queue(`
		INSERT INTO positions AS p (user_id, symbol)
		SELECT DISTINCT o.requested_by, o.symbol
		FROM orders o JOIN unnest($1::uuid[], $2::uuid[]) AS d(order_id, approver_id) ON o.id = d.order_id
		WHERE o.status = 'pending' AND o.requested_by <> d.approver_id AND `+deciderMayDecide("d.approver_id")+`
		ORDER BY 1, 2
		ON CONFLICT (user_id, symbol) DO UPDATE SET symbol = p.symbol
		RETURNING p.user_id, p.symbol, p.quantity, p.avg_entry_price, p.realized_pnl, p.updated_at`, ids, approvers)
	// One clock reading per order (decided_at and updated_at the same instant), taken as the
	// array is read: the decisions are in the batch's order, whatever the join's plan.
	b.Queue(`
		UPDATE orders SET status = 'approved', decided_by = d.approver_id, decided_at = d.at, updated_at = d.at
		FROM (SELECT order_id, approver_id, clock_timestamp() AS at
			FROM unnest($1::uuid[], $2::uuid[]) AS u(order_id, approver_id)) AS d
		WHERE id = d.order_id AND status = 'pending' AND requested_by <> d.approver_id AND `+deciderMayDecide("d.approver_id")+`
		RETURNING `+orderColumns, ids, approvers)
	br := conn.SendBatch(ctx, b)
	decided, positions, err := readDecisions(br)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}

	// Apply the trades in decision order, each from the position the previous one left.
	slices.SortFunc(decided, func(a, b *trading.Order) int {
		if c := a.DecidedAt.Compare(*b.DecidedAt); c != 0 {
			return c
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
	// Trades are listed, and the mark is taken, by execution time and then id: two trades
	// decided in the same microsecond must sort in the order they were applied, so their ids
	// are random but increasing in that order.
	tradeIDs := make([]uuid.UUID, len(decided))
	for i := range tradeIDs {
		tradeIDs[i] = uuid.New()
	}
	slices.SortFunc(tradeIDs, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
	trades := make([]*trading.Trade, len(decided))
	for i, o := range decided {
		k := positionKey{o.RequestedBy, o.Symbol}
		pos, ok := positions[k]
		if !ok {
			return errors.New("postgres: the position of a decided order was not locked")
		}
		positions[k], trades[i] = execute(pos, o)
		trades[i].ID = tradeIDs[i]
	}

	b = &pgx.Batch{}
	if len(decided) > 0 {
		b.Queue(insertTradesSQL, tradeArrays(trades)...)
		// Every locked position is one a decided order moves: the upsert locked those of the
		// orders the UPDATE then decided, with the orders' rows held in between.
		b.Queue(updatePositionsSQL, positionArrays(positions)...)
	}
	b.Queue("COMMIT")
	br = conn.SendBatch(ctx, b)
	err = readTrades(br, len(decided) > 0)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil && len(decided) > 0 && !refusedByServer(err) {
		return &commitUnknown{err: err, decided: decided}
	}
	if err != nil {
		return err
	}

	for i, o := range decided {
		j := first[o.ID]
		out[j] = approved{order: o, trade: trades[i]}
	}
	for id, j := range first {
		if out[j].order == nil || out[j].order.ID != id {
			alone[j] = true // not decided by the UPDATE: answered alone
		}
	}
	return nil
}

// execute applies the decided order o to its requester's position pos: the position after
// the trade, and the trade (without its id). The trade executes at the order's decision time,
// which was taken with the position held: a position's trades execute in the order they are
// applied to it, which is what the mark ("latest trade") and the trades' listing rely on.
func execute(pos trading.Position, o *trading.Order) (trading.Position, *trading.Trade) {
	next, realized := trading.ApplyTrade(pos, o.Side, o.Quantity.Decimal, o.Price.Decimal)
	// Realized P&L is stored at Scale digits; the position adds exactly what the trade
	// row says, so the sum of a user's trades always equals the position's realized P&L.
	realized = realized.Round(trading.Scale)
	next.RealizedPnL = pos.RealizedPnL.Add(realized)
	next.UserID, next.Symbol, next.UpdatedAt = pos.UserID, pos.Symbol, *o.DecidedAt
	return next, &trading.Trade{OrderID: o.ID, UserID: o.RequestedBy, Symbol: o.Symbol, Side: o.Side,
		Quantity: o.Quantity, Price: o.Price, RealizedPnL: amount(realized), ExecutedAt: *o.DecidedAt}
}

// readDecisions reads the first round trip: BEGIN, the lock timeout, the deciders' and the
// orders' locks, the locked positions, the decided orders.
func readDecisions(br pgx.BatchResults) ([]*trading.Order, map[positionKey]trading.Position, error) {
	for range 2 { // BEGIN, the lock timeout
		if _, err := br.Exec(); err != nil {
			return nil, nil, err
		}
	}
	for range 2 { // the deciders' and the orders' locks: nothing to read
		rows, err := br.Query()
		if err != nil {
			return nil, nil, err
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, err
	}
	positions := map[positionKey]trading.Position{}
	for rows.Next() {
		var p trading.Position
		if err := rows.Scan(&p.UserID, &p.Symbol, num(&p.Quantity), num(&p.AvgEntryPrice), num(&p.RealizedPnL), &p.UpdatedAt); err != nil {
			rows.Close()
			return nil, nil, err
		}
		positions[positionKey{p.UserID, p.Symbol}] = p
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	rows, err = br.Query()
	if err != nil {
		return nil, nil, err
	}
	decided, err := collectOrders(rows)
	return decided, positions, err
}

// setLockTimeout bounds this transaction's lock waits (lockTimeoutSetting); one statement
// text whatever the value, so that it is prepared once.
const setLockTimeout = `SELECT set_config('lock_timeout', $1, true)`

// lockTimeoutSetting is the lock_timeout of a transaction: wait, or less when ctx ends
// sooner. A transaction elsewhere that holds a row (a replica frozen mid-approval) then fails
// the approvals that need the row instead of holding them, and everything queued behind them,
// until the query timeout.
func lockTimeoutSetting(ctx context.Context, wait time.Duration) string {
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline)/2)
	}
	return fmt.Sprintf("%dms", max(wait.Milliseconds(), 1))
}

// Lock waits. Approvals hold their locks for two round trips, a few milliseconds, so a batch
// that waits longer than batchLockTimeout most likely met a stuck transaction: it gives up
// early and its approvals are retried alone, each waiting up to lockTimeout, so that one stuck
// row costs only the approvals that need it.
const (
	batchLockTimeout = 200 * time.Millisecond
	lockTimeout      = time.Second
)

const insertTradesSQL = `
	INSERT INTO trades (order_id, user_id, symbol, side, quantity, price, realized_pnl, executed_at, id)
	SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[], $6::numeric[],
		$7::numeric[], $8::timestamptz[], $9::uuid[])`

func tradeArrays(trades []*trading.Trade) []any {
	n := len(trades)
	var (
		orders, users             = make([]uuid.UUID, n), make([]uuid.UUID, n)
		symbols, sides            = make([]string, n), make([]string, n)
		quantity, price, realized = make([]string, n), make([]string, n), make([]string, n)
		executedAt                = make([]time.Time, n)
		ids                       = make([]uuid.UUID, n)
	)
	for i, t := range trades {
		orders[i], users[i], symbols[i], sides[i] = t.OrderID, t.UserID, t.Symbol, string(t.Side)
		quantity[i], price[i], realized[i] = numArg(t.Quantity.Decimal), numArg(t.Price.Decimal), numArg(t.RealizedPnL.Decimal)
		executedAt[i], ids[i] = t.ExecutedAt, t.ID
	}
	return []any{orders, users, symbols, sides, quantity, price, realized, executedAt, ids}
}

const updatePositionsSQL = `
	UPDATE positions AS p SET quantity = n.quantity, avg_entry_price = n.avg_entry_price,
		realized_pnl = n.realized_pnl, updated_at = n.updated_at
	FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::numeric[], $5::numeric[], $6::timestamptz[])
		AS n(user_id, symbol, quantity, avg_entry_price, realized_pnl, updated_at)
	WHERE p.user_id = n.user_id AND p.symbol = n.symbol`

func positionArrays(positions map[positionKey]trading.Position) []any {
	n := len(positions)
	var (
		users                      = make([]uuid.UUID, 0, n)
		symbols                    = make([]string, 0, n)
		quantity, avgEntry, realzd = make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
		updatedAt                  = make([]time.Time, 0, n)
	)
	for _, p := range positions {
		users, symbols, updatedAt = append(users, p.UserID), append(symbols, p.Symbol), append(updatedAt, p.UpdatedAt)
		quantity = append(quantity, numArg(p.Quantity))
		avgEntry = append(avgEntry, numArg(p.AvgEntryPrice))
		realzd = append(realzd, numArg(p.RealizedPnL))
	}
	return []any{users, symbols, quantity, avgEntry, realzd, updatedAt}
}

// readTrades reads the second round trip: the trades' INSERT and the positions' UPDATE (when
// there were trades), and COMMIT. Nothing is scanned: the trades' ids and times were chosen
// before, so any error here is the server's (the transaction rolled back) or the
// connection's (the outcome unknown), never the client's after a COMMIT that went through.
func readTrades(br pgx.BatchResults, withTrades bool) error {
	n := 1
	if withTrades {
		n = 3
	}
	for range n {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	return nil
}
