package postgres

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/batch"
)

// OrderServiceConfig configures the order workflow.
type OrderServiceConfig struct {
	// MaxDailyLoss, when set, refuses new orders of a user whose realized P&L over the trades
	// executed since 00:00 UTC today is at or below -MaxDailyLoss.
	MaxDailyLoss *decimal.Decimal
	// Invalidator is told after an order is created, approved or rejected that the requester's
	// cached positions and summary (pending_orders counts too) are stale. May be nil (no cache).
	Invalidator trading.Invalidator
	// Logger receives the failures that do not fail a call (a failed invalidation). Optional.
	Logger *slog.Logger
	// ObserveBatch, when set, is told the size of every batch of writes as it is sent:
	// operation "insert_orders" or "approve_orders" (a metric). Optional.
	ObserveBatch func(operation string, size int)
}

// OrderService implements trading.OrderService, the four-eyes workflow.
type OrderService struct {
	db        *DB
	cfg       OrderServiceConfig
	log       *slog.Logger
	inserts   *batch.Batcher[orderInsert, insertedOrder]
	approvals *batch.Batcher[approval, approved]
}

var _ trading.OrderService = (*OrderService)(nil)

// NewOrderService returns the order workflow.
func NewOrderService(db *DB, cfg OrderServiceConfig) *OrderService {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &OrderService{db: db, cfg: cfg, log: log}
	observe := func(operation string) func(int) {
		if cfg.ObserveBatch == nil {
			return nil
		}
		return func(size int) { cfg.ObserveBatch(operation, size) }
	}
	s.inserts = batch.New(s.insertOrders, batch.Config{MaxInFlight: insertsInFlight, MaxBatch: maxInsertBatch,
		FailQueued: databaseDown, Observe: observe("insert_orders")})
	s.approvals = batch.New(s.approveBatch, batch.Config{MaxInFlight: approvalsInFlight, MaxBatch: maxApprovalBatch,
		FailQueued: databaseDown, Observe: observe("approve_orders")})
	return s
}

const orderColumns = `id, client_order_id, symbol, side, quantity, price, status, requested_by,
	decided_by, decision_reason, created_at, updated_at, decided_at`

func scanOrder(row pgx.Row) (*trading.Order, error) {
	var (
		o            trading.Order
		side, status string
	)
	err := row.Scan(&o.ID, &o.ClientOrderID, &o.Symbol, &side, num(&o.Quantity.Decimal), num(&o.Price.Decimal),
		&status, &o.RequestedBy, &o.DecidedBy, &o.DecisionReason, &o.CreatedAt, &o.UpdatedAt, &o.DecidedAt)
	if err != nil {
		return nil, err
	}
	o.Side, o.Status = trading.Side(side), trading.OrderStatus(status)
	o.Quantity.Set, o.Price.Set = true, true
	o.CreatedAt, o.UpdatedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC()
	if o.DecidedAt != nil {
		t := o.DecidedAt.UTC()
		o.DecidedAt = &t
	}
	return &o, nil
}

func collectOrders(rows pgx.Rows) ([]*trading.Order, error) {
	defer rows.Close()
	orders := []*trading.Order{}
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, err
		}
		orders = append(orders, o)
	}
	return orders, rows.Err()
}

func errOrderNotFound() error { return trading.Errorf(trading.ENOTFOUND, "order not found") }

// sameBody reports whether a retried request is the order that was stored under its client
// order id (quantities compare as numbers: "1.0" is "1").
func sameBody(o *trading.Order, n trading.NewOrder) bool {
	return o.Symbol == n.Symbol && o.Side == n.Side && o.Quantity.Equal(n.Quantity) && o.Price.Equal(n.Price)
}

// CreateOrder stores a pending order for the caller, idempotently per client order id.
//
// Idempotency holds under concurrent retries because the unique index on (requested_by,
// client_order_id) decides: INSERT ... ON CONFLICT DO NOTHING inserts for exactly one of them,
// the others insert nothing and read the winner's row. That holds within one batched INSERT
// too (insertOrders): the first row with a key is inserted, the others conflict with it.
func (s *OrderService) CreateOrder(ctx context.Context, n trading.NewOrder) (*trading.Order, bool, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, false, err
	}
	if err := checkNewOrder(n); err != nil {
		return nil, false, err
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()

	var clientOrderID *string
	if n.ClientOrderID != "" {
		clientOrderID = &n.ClientOrderID
		// A retry of an order that exists is answered with it even once the loss limit is
		// reached: it creates nothing.
		if o, err := s.findByClientOrderID(ctx, p.UserID, n); err == nil || !errors.Is(err, pgx.ErrNoRows) {
			if err == nil {
				// A retry: the replica that committed the order may have died before its
				// invalidation, and the summary must count the order the retry is answered.
				s.invalidate(ctx, p.UserID, trading.ViewSummary)
			}
			return o, false, err
		}
	}
	if err := s.checkDailyLoss(ctx, p.UserID); err != nil {
		return nil, false, err
	}
	r, err := s.inserts.Do(ctx, orderInsert{id: uuid.New(), clientOrderID: clientOrderID, order: n, userID: p.UserID})
	if err == nil {
		err = r.err
	}
	if isForeignKeyViolation(err) {
		// A valid token of a user that was deleted since.
		return nil, false, trading.Errorf(trading.EUNAUTHORIZED, "the user no longer exists")
	}
	if err != nil {
		if maybeDone(err) {
			// The INSERT may have committed with its answer lost: its retry finds the order
			// (client_order_id), and the summary must count it then, not once it expires.
			// Not when it was never sent (no connection, the batch ahead failed): during an
			// outage each failed submission would drop the cached summary on every replica,
			// and the next read go to the dead database (503) instead of the cache.
			s.invalidate(ctx, p.UserID, trading.ViewSummary)
		}
		return nil, false, s.db.mapError(err)
	}
	if r.order == nil && clientOrderID == nil {
		return nil, false, fmt.Errorf("postgres: an order without a client order id was not inserted")
	}
	if r.order == nil {
		// A concurrent request with the same client order id won the insert: most often this
		// is its retry, and as for a replay above, its replica may die before invalidating.
		o, err := s.findByClientOrderID(ctx, p.UserID, n)
		if err == nil {
			s.invalidate(ctx, p.UserID, trading.ViewSummary)
		}
		return o, false, s.db.mapError(err)
	}
	o := r.order
	s.invalidate(ctx, p.UserID, trading.ViewSummary) // pending_orders changed, positions did not
	return o, true, nil
}

// orderInsert is one new order on its way into a batched INSERT; its id is chosen here so
// that the rows the INSERT returns can be matched to their callers.
type orderInsert struct {
	id            uuid.UUID
	clientOrderID *string
	order         trading.NewOrder
	userID        uuid.UUID
}

// insertedOrder is the outcome of one orderInsert: the stored order, or nil when its client
// order id was taken (ON CONFLICT DO NOTHING), or err when its own insert failed.
type insertedOrder struct {
	order *trading.Order
	err   error
}

// Submissions are inserted in batches (package batch): the orders that arrive while an
// insert is in flight go into one multi-row INSERT, one statement and one commit for all of
// them. A single-row insert into orders costs PostgreSQL far more per statement (parse,
// plan, the CHECK constraints' expressions set up anew, the commit) than per row: pgbench on
// the 2-core machine did 6.2-6.6k single-row INSERTs per second and 3.1-3.6k eight-row ones
// (24-28k rows). A submission that finds the slot free is inserted at once, so nothing waits
// at low load. One insert in flight makes the largest batches: on the 2-core machine it
// submitted 0.82-0.90 of the raw insert rate at 16 clients against 0.66-0.73 with two (nothing
// blocks an insert for long, so one in flight does not stall the others); maxInsertBatch
// bounds a statement's size.
const (
	insertsInFlight = 1
	maxInsertBatch  = 64
)

// insertOrders inserts a batch of new orders in one statement (one transaction). When the
// server refuses the statement (a deleted user's foreign key, a deadlock, say), nothing was
// inserted and every order is inserted on its own, so that each caller gets its own
// outcome: one bad order must not fail the others.
//
// The rows go in (user, client order id) order: two batches that insert the same keys (two
// replicas serving retries of the same orders) then wait for each other's unique-index
// entries in the same order, and cannot deadlock.
func (s *OrderService) insertOrders(ctx context.Context, batch []orderInsert) ([]insertedOrder, error) {
	// The batch is shared: it must not fail because the caller that sends it hung up.
	detached := context.WithoutCancel(ctx)
	ctx, cancel := s.db.bound(detached)
	defer cancel()
	order := make([]int, len(batch))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := bytes.Compare(batch[a].userID[:], batch[b].userID[:]); c != 0 {
			return c
		}
		return cmp.Compare(clientKey(batch[a]), clientKey(batch[b]))
	})
	sorted := make([]orderInsert, len(batch))
	for i, j := range order {
		sorted[i] = batch[j]
	}
	rows, err := s.insertOrderRows(ctx, sorted)
	if err == nil {
		out := make([]insertedOrder, len(batch))
		for i, j := range order {
			out[j] = rows[i]
		}
		return out, nil
	}
	if len(batch) == 1 || !refusedByServer(err) {
		return nil, err
	}
	out := make([]insertedOrder, len(batch))
	for i := range batch {
		ctx, cancel := s.db.bound(detached) // each its own time: one slow insert must not starve the rest
		r, err := s.insertOrderRows(ctx, batch[i:i+1])
		cancel()
		if databaseDown(err) {
			// The rest would wait out their timeouts one after another: they get the error. The
			// orders inserted before are committed, and their callers get them: told 503, a
			// submitter retries and stores its order twice. Only when none was inserted does the
			// batch fail as a whole, and the queue with it.
			if !slices.ContainsFunc(out[:i], func(r insertedOrder) bool { return r.order != nil }) {
				return nil, err
			}
			out[i] = insertedOrder{err: err}
			for j := i + 1; j < len(batch); j++ {
				out[j] = insertedOrder{err: &notSentError{err}} // their INSERTs were not sent
			}
			return out, nil
		}
		if err != nil {
			out[i].err = err
			continue
		}
		out[i] = r[0]
	}
	return out, nil
}

func clientKey(o orderInsert) string {
	if o.clientOrderID == nil {
		return ""
	}
	return *o.clientOrderID
}

// insertOrderRows is insertOrders' statement: unnest turns the columns' arrays into rows, so
// that one prepared statement serves every batch size.
func (s *OrderService) insertOrderRows(ctx context.Context, batch []orderInsert) ([]insertedOrder, error) {
	var (
		ids, users      = make([]uuid.UUID, len(batch)), make([]uuid.UUID, len(batch))
		clientOrderIDs  = make([]*string, len(batch))
		symbols, sides  = make([]string, len(batch)), make([]string, len(batch))
		quantity, price = make([]string, len(batch)), make([]string, len(batch))
	)
	for i, b := range batch {
		ids[i], users[i], clientOrderIDs[i] = b.id, b.userID, b.clientOrderID
		symbols[i], sides[i] = b.order.Symbol, string(b.order.Side)
		quantity[i], price[i] = numArg(b.order.Quantity), numArg(b.order.Price)
	}
	// The connection is acquired apart from the statement, so that a failure to get one is
	// known not sent (notSentError): the caller then keeps the cache. pool.Query's retry of a
	// stale statement is done here in the same way (nothing ran: it is refused before).
	insert := func() ([]*trading.Order, error) {
		conn, err := s.db.pool.Acquire(ctx)
		if err != nil {
			return nil, &notSentError{err}
		}
		defer conn.Release()
		rows, err := conn.Query(ctx, `
			INSERT INTO orders (id, client_order_id, symbol, side, quantity, price, requested_by)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::uuid[])
			ON CONFLICT (requested_by, client_order_id) DO NOTHING
			RETURNING `+orderColumns,
			ids, clientOrderIDs, symbols, sides, quantity, price, users)
		if err != nil {
			return nil, err
		}
		return collectOrders(rows)
	}
	orders, err := insert()
	if staleStatement(err) {
		s.db.pool.Reset()
		orders, err = insert()
	}
	if err != nil {
		return nil, err
	}
	byID := make(map[uuid.UUID]*trading.Order, len(orders))
	for _, o := range orders {
		byID[o.ID] = o
	}
	out := make([]insertedOrder, len(batch))
	for i, b := range batch {
		out[i].order = byID[b.id] // nil: its client order id was taken
	}
	return out, nil
}

// checkNewOrder is a last guard for callers that skipped trading.OrderRules.Validate (which
// checks symbols and limits): the store refuses what its constraints would refuse, as 422.
func checkNewOrder(n trading.NewOrder) error {
	var fields []trading.FieldError
	if n.Symbol == "" {
		fields = append(fields, trading.FieldError{Field: "symbol", Message: "is required"})
	}
	if n.Side != trading.Buy && n.Side != trading.Sell {
		fields = append(fields, trading.FieldError{Field: "side", Message: "must be buy or sell"})
	}
	if !n.Quantity.IsPositive() {
		fields = append(fields, trading.FieldError{Field: "quantity", Message: "must be greater than 0"})
	}
	if !n.Price.IsPositive() {
		fields = append(fields, trading.FieldError{Field: "price", Message: "must be greater than 0"})
	}
	if len(n.ClientOrderID) > 64 {
		fields = append(fields, trading.FieldError{Field: "client_order_id", Message: "must be at most 64 characters"})
	}
	if len(fields) > 0 {
		return trading.Invalid(fields...)
	}
	return nil
}

// findByClientOrderID returns the caller's order stored under n's client order id: the order
// when the body matches, ECONFLICT when it differs, pgx.ErrNoRows when there is none.
func (s *OrderService) findByClientOrderID(ctx context.Context, userID uuid.UUID, n trading.NewOrder) (*trading.Order, error) {
	o, err := scanOrder(s.db.pool.QueryRow(ctx, `
		SELECT `+orderColumns+` FROM orders WHERE requested_by = $1 AND client_order_id = $2`,
		userID, n.ClientOrderID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if err != nil {
		return nil, s.db.mapError(err)
	}
	if !sameBody(o, n) {
		return nil, trading.Errorf(trading.ECONFLICT,
			"client_order_id %q was already used for a different order", n.ClientOrderID)
	}
	return o, nil
}

// startOfDayUTC is the SQL for 00:00 UTC of the database's current day: the database clock is
// the one that stamped executed_at, so both sides of the comparison use it.
const startOfDayUTC = `date_trunc('day', now(), 'UTC')`

// checkDailyLoss refuses new orders (EINVALID, field "daily_loss") once the user's realized
// P&L of today is at or below -MaxDailyLoss.
func (s *OrderService) checkDailyLoss(ctx context.Context, userID uuid.UUID) error {
	if s.cfg.MaxDailyLoss == nil {
		return nil
	}
	var pnl decimal.Decimal
	err := s.db.pool.QueryRow(ctx, `
		SELECT COALESCE(SUM(realized_pnl), 0) FROM trades
		WHERE user_id = $1 AND executed_at >= `+startOfDayUTC, userID).Scan(num(&pnl))
	if err != nil {
		return s.db.mapError(err)
	}
	if limit := *s.cfg.MaxDailyLoss; pnl.LessThanOrEqual(limit.Neg()) {
		return trading.Invalid(trading.FieldError{
			Field: "daily_loss",
			Message: fmt.Sprintf("daily loss limit of %s reached (realized today: %s); new orders are refused until 00:00 UTC",
				limit.String(), pnl.StringFixed(trading.Scale)),
		})
	}
	return nil
}

// FindOrderByID returns the order when the caller may see it; ENOTFOUND otherwise (an order of
// another trader is indistinguishable from a missing one).
func (s *OrderService) FindOrderByID(ctx context.Context, id uuid.UUID) (*trading.Order, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	o, err := scanOrder(s.db.pool.QueryRow(ctx, `
		SELECT `+orderColumns+` FROM orders
		WHERE id = $1 AND ($2 OR requested_by = $3)`, id, p.CanSeeAll(), p.UserID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errOrderNotFound()
	}
	return o, s.db.mapError(err)
}

// where builds a WHERE clause from conditions with numbered placeholders.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	for _, a := range args {
		w.args = append(w.args, a)
		cond = strings.Replace(cond, "?", fmt.Sprintf("$%d", len(w.args)), 1)
	}
	w.conds = append(w.conds, cond)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// FindOrders lists the visible orders newest first with keyset pagination on
// (created_at DESC, id DESC): a page never repeats or skips rows however many are inserted
// meanwhile, and its cost does not grow with the page number.
func (s *OrderService) FindOrders(ctx context.Context, f trading.OrderFilter) ([]*trading.Order, string, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, "", err
	}
	page, err := newKeysetPage(f.Limit, f.Cursor)
	if err != nil {
		return nil, "", err
	}
	var w where
	if !p.CanSeeAll() {
		w.add("requested_by = ?", p.UserID)
	}
	if f.Status != nil {
		if _, err := trading.ParseOrderStatus(string(*f.Status)); err != nil {
			return nil, "", err
		}
		w.add("status = ?", string(*f.Status))
	}
	if f.Symbol != nil {
		w.add("symbol = ?", *f.Symbol)
	}
	if page.after != nil {
		w.add("(created_at, id) < (?, ?)", page.after.at, page.after.id)
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	// Planned with its values on every call (the unnamed statement; the description is
	// cached), never with a generic plan: one plan for every status and symbol walks the
	// orders newest first and filters, and for the few pending orders or a symbol nobody
	// trades it read the whole table per page (TestOrderListingsArePlannedWithTheirValues).
	// Planning costs about 0.1 ms; a listing is not the hot write path.
	args := append([]any{pgx.QueryExecModeCacheDescribe}, w.args...)
	rows, err := s.db.pool.Query(ctx, `SELECT `+orderColumns+` FROM orders`+w.String()+page.sql("created_at"), args...)
	if err != nil {
		return nil, "", s.db.mapError(err)
	}
	orders, err := collectOrders(rows)
	if err != nil {
		return nil, "", s.db.mapError(err)
	}
	orders, next := trimPage(page, orders, func(o *trading.Order) (time.Time, uuid.UUID) { return o.CreatedAt, o.ID })
	return orders, next, nil
}

// FindPendingOrders lists the pending orders visible to the caller, oldest first: all of
// them (api.md: "pending orders visible to the caller"; it has no paging). A cap would hide
// the orders past it without a word; the queue is bounded by the trading limits per user
// and by the desk that approves it.
func (s *OrderService) FindPendingOrders(ctx context.Context) ([]*trading.Order, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	// Two query shapes rather than "($1 OR requested_by = $2)", so that each keeps its own
	// index under a generic plan: orders_status_keyset_idx (read backward) for risk/admin,
	// orders_pending_requested_by_idx for a trader.
	var w where
	w.add("status = 'pending'")
	if !p.CanSeeAll() {
		w.add("requested_by = ?", p.UserID)
	}
	rows, err := s.db.pool.Query(ctx, `SELECT `+orderColumns+` FROM orders`+w.String()+` ORDER BY created_at, id`, w.args...)
	if err != nil {
		return nil, s.db.mapError(err)
	}
	orders, err := collectOrders(rows)
	return orders, s.db.mapError(err)
}

// decide moves a pending order to its decision in one conditional UPDATE: still pending and not
// requested by the decider (four eyes). Concurrent deciders queue on the row lock; when the
// winner commits, PostgreSQL re-checks the WHERE for each of the others on the new row
// version, which is no longer pending, so exactly one UPDATE matches. When nothing matched,
// whyNotDecided says why.
func decide(ctx context.Context, tx pgx.Tx, p trading.Principal, id uuid.UUID, set string, args ...any) (*trading.Order, error) {
	o, err := scanOrder(tx.QueryRow(ctx, decideSQL(set), append([]any{id, p.UserID}, args...)...))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, whyNotDecided(ctx, tx, p, id)
	}
	return o, err
}

// decideSQL is decide's UPDATE: $1 the order, $2 the decider, set the new status and what
// goes with it (its own arguments from $3).
func decideSQL(set string) string {
	// One clock reading: decided_at and updated_at of a decision are the same instant.
	return `UPDATE orders SET ` + set + `, decided_by = $2, decided_at = c.at, updated_at = c.at
		FROM (SELECT clock_timestamp() AS at) c
		WHERE id = $1 AND status = 'pending' AND requested_by <> $2 AND ` + deciderMayDecide("$2") + `
		RETURNING ` + orderColumns
}

// deciderMayDecide is an SQL condition: the user whose id is the expression decider holds,
// now, a role that may decide. canDecide checked the token's roles, which are as old as the
// token; a role taken away ends the user's logins (migration 00004), but the HTTP layer's
// session check trusts a live login for a few seconds (SessionCheckTTL), and a decision
// moves money: it is refused at once.
func deciderMayDecide(decider string) string {
	return `EXISTS (SELECT 1 FROM users u WHERE u.id = ` + decider + ` AND u.roles && ARRAY['risk', 'admin'])`
}

// whyNotDecided explains a decision that matched no row: EUNAUTHORIZED (the decider's user is
// gone), EFORBIDDEN (the decider lost the role, or is the requester: four eyes), ENOTFOUND or
// ECONFLICT (no longer pending).
func whyNotDecided(ctx context.Context, tx rowQuerier, p trading.Principal, id uuid.UUID) error {
	var mayDecide bool
	err := tx.QueryRow(ctx, `SELECT roles && ARRAY['risk', 'admin'] FROM users WHERE id = $1`, p.UserID).Scan(&mayDecide)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return errDeciderGone()
	case err != nil:
		return err
	case !mayDecide:
		return trading.ErrMayNotDecide()
	}
	var (
		requestedBy uuid.UUID
		status      string
	)
	err = tx.QueryRow(ctx, `SELECT requested_by, status FROM orders WHERE id = $1`, id).Scan(&requestedBy, &status)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return errOrderNotFound()
	case err != nil:
		return err
	case requestedBy == p.UserID:
		return trading.Errorf(trading.EFORBIDDEN, "four-eyes rule: you cannot decide your own order")
	case status != string(trading.StatusPending):
		return trading.Errorf(trading.ECONFLICT, "order is already %s", status)
	}
	return fmt.Errorf("postgres: order %s is pending but could not be decided", id)
}

func canDecide(p trading.Principal) error {
	if !p.CanDecide() {
		return trading.ErrMayNotDecide()
	}
	return nil
}

// ApproveOrder executes a pending order into one trade at its price and moves the requester's
// position, in one transaction (approval.go; concurrent approvals share it):
//   - the order row is locked, then the requester's position (created by the first trade of
//     a symbol), then the conditional UPDATE of the order decides it: exactly one concurrent
//     approval wins, and trades of one user and symbol apply one at a time, each from the
//     committed position (trading.ApplyTrade), in the order of their decision times;
//   - the unique index on trades.order_id backs the exactly-once guarantee up.
//
// Locks are always taken order rows first, then position rows, each kind in a fixed order:
// no deadlock between approvals. Lock waits are bounded by lockTimeout (503 when a stuck
// transaction holds the row).
//
// The transaction takes two round trips, each a pipeline of statements (pgx.Batch): the
// locks and the decision; then the trade, the position's new values and COMMIT. As five round
// trips (pgx.Tx, a statement each) approvals ran 14% slower: with PostgreSQL on the same
// cores, every round trip costs both processes a wakeup and system calls. A failure anywhere
// leaves the transaction open or aborted; it is rolled back.
//
// After the commit the requester's cache is invalidated, before returning. The trade is
// committed by then, so a failed invalidation is logged and the approval still succeeds:
// answering an error would make the client believe the approval failed (a retry would get
// 409), while the staleness it causes is bounded by the cache TTLs.
func (s *OrderService) ApproveOrder(ctx context.Context, id uuid.UUID) (*trading.Order, *trading.Trade, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := canDecide(p); err != nil {
		return nil, nil, err
	}
	bctx, cancel := s.db.bound(ctx)
	defer cancel()
	r, err := s.approvals.Do(bctx, approval{orderID: id, approver: p})
	if err == nil {
		err = r.err
	}
	if isForeignKeyViolation(err) {
		return nil, nil, errDeciderGone() // a valid token of a user deleted since
	}
	if err != nil {
		err = s.db.mapError(err)
		s.invalidateDecided(ctx, id, err)
		return nil, nil, err
	}
	s.invalidateTrade(ctx, r.order.RequestedBy, r.order.Symbol) // a trade moved a position and a mark
	return r.order, r.trade, nil
}

// rowQuerier is a transaction or a connection inside one.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// invalidate tells the cache that userID's stale views changed (invalidateTrade: a trade in
// symbol, which also moved its mark). The change is committed: a client that hung up must not
// leave the cache stale, so the call is detached from it; a failure is logged, not returned.
func (s *OrderService) invalidate(ctx context.Context, userID uuid.UUID, stale trading.Views) {
	s.tellCache(ctx, userID, "", func(ctx context.Context, inv trading.Invalidator) error {
		return inv.InvalidateUser(ctx, userID, stale)
	})
}

func (s *OrderService) invalidateTrade(ctx context.Context, userID uuid.UUID, symbol string) {
	s.tellCache(ctx, userID, symbol, func(ctx context.Context, inv trading.Invalidator) error {
		return inv.InvalidateTrade(ctx, userID, symbol)
	})
}

func (s *OrderService) tellCache(ctx context.Context, userID uuid.UUID, symbol string, call func(context.Context, trading.Invalidator) error) {
	if s.cfg.Invalidator == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.db.timeout)
	defer cancel()
	if err := call(ctx, s.cfg.Invalidator); err != nil {
		s.log.ErrorContext(ctx, "cache invalidation after an order change failed; cached views may be stale until they expire",
			"user_id", userID, "symbol", symbol, "error", err)
	}
}

// RejectOrder marks a pending order rejected with the reason (same rules as ApproveOrder).
func (s *OrderService) RejectOrder(ctx context.Context, id uuid.UUID, reason string) (*trading.Order, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := canDecide(p); err != nil {
		return nil, err
	}
	if err := trading.ValidateReason(reason); err != nil {
		return nil, err
	}
	var order *trading.Order
	err = s.db.inTx(ctx, pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
		// The order's row may be held by a stuck transaction (an approval on a frozen
		// replica): give up after lockTimeout, as an approval does, not the query timeout.
		if _, err := tx.Exec(ctx, setLockTimeout, lockTimeoutSetting(ctx, lockTimeout)); err != nil {
			return err
		}
		// The decider's row shared, as an approval does: the decision and whyNotDecided then
		// read the same roles (a change in between answered 500).
		if _, err := tx.Exec(ctx, `SELECT id FROM users WHERE id = $1 FOR SHARE`, p.UserID); err != nil {
			return err
		}
		o, err := decide(ctx, tx, p, id, `status = 'rejected', decision_reason = $3`, reason)
		if err == nil {
			order = o
		}
		return err
	})
	if isForeignKeyViolation(err) {
		return nil, errDeciderGone() // a valid token of a user deleted since
	}
	// The requester's pending_orders changed. order is set once the UPDATE decided it: on an
	// error after that the COMMIT may still have gone through (its answer lost), so the
	// summary is dropped then too, lest it count a rejected order until it expires.
	if order != nil {
		s.invalidate(ctx, order.RequestedBy, trading.ViewSummary)
	}
	if err != nil {
		s.invalidateDecided(ctx, id, err)
		return nil, err
	}
	return order, nil
}

// invalidateDecided drops the requester's cached views when a decision of order id was
// refused with 409 because the order is already decided. The replica that decided it may have
// died between its COMMIT and its invalidation (kill -9, a lost node), leaving every cache,
// Redis's too, without the decision until the entries expire; the refused decision is most
// often that client's retry, and its next read must show the decision the 409 reports. It
// costs a lookup and an invalidation per 409, which only retries and races get.
func (s *OrderService) invalidateDecided(ctx context.Context, id uuid.UUID, err error) {
	if s.cfg.Invalidator == nil || trading.ErrorCode(err) != trading.ECONFLICT {
		return
	}
	ctx, cancel := s.db.bound(context.WithoutCancel(ctx))
	defer cancel()
	var (
		requestedBy    uuid.UUID
		symbol, status string
	)
	if err := s.db.pool.QueryRow(ctx, `SELECT requested_by, symbol, status FROM orders WHERE id = $1`, id).
		Scan(&requestedBy, &symbol, &status); err != nil {
		return // the caches' TTLs bound what is left stale
	}
	switch trading.OrderStatus(status) {
	case trading.StatusApproved:
		s.invalidateTrade(ctx, requestedBy, symbol)
	case trading.StatusRejected:
		s.invalidate(ctx, requestedBy, trading.ViewSummary)
	}
}

// errDeciderGone: the decision's foreign key to the decider failed, so the token outlived its
// user (as CreateOrder answers for the requester).
func errDeciderGone() error {
	return trading.Errorf(trading.EUNAUTHORIZED, "the user no longer exists")
}
