-- Secondary indexes, built CONCURRENTLY so that migrating a live database does not block
-- writes. CREATE INDEX CONCURRENTLY cannot run in a transaction, hence NO TRANSACTION: each
-- statement runs on its own, and a failure leaves this version unrecorded so that the next
-- `tradingd migrate` runs the whole file again (every statement is idempotent).
--
-- A CONCURRENTLY build that fails (or whose client dies) leaves an INVALID index behind, and
-- CREATE INDEX ... IF NOT EXISTS would then keep that useless index forever. So the file first
-- drops every INVALID index of the names below, and only invalid ones: a valid index from an
-- earlier partial run is kept. DROP INDEX CONCURRENTLY cannot run inside a DO block (it is
-- a function body, i.e. a transaction), so that conditional drop is a plain DROP INDEX: it
-- holds the table's lock only for the catalog change, and an invalid index serves no reads.
-- goose's session lock (pg_try_advisory_lock, polled) is held for the whole run, so no other
-- migrator is building one of these indexes at the same time.

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    leftover regclass;
BEGIN
    FOR leftover IN
        SELECT i.indexrelid::regclass
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = current_schema()::regnamespace
          AND NOT i.indisvalid
          AND c.relname IN (
              'orders_requested_by_client_order_id_key', 'orders_symbol_status_idx',
              'orders_pending_symbol_idx', 'orders_pending_created_idx',
              'orders_pending_requested_by_idx', 'orders_status_idx', 'orders_created_at_idx',
              'orders_updated_at_idx', 'orders_requested_by_keyset_idx', 'orders_keyset_idx',
              'trades_order_id_key', 'trades_symbol_executed_idx', 'trades_user_keyset_idx',
              'refresh_tokens_session_id_idx', 'sessions_user_id_idx')
    LOOP
        RAISE NOTICE 'dropping invalid leftover index %', leftover;
        EXECUTE format('DROP INDEX %s', leftover);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- Idempotency key of POST /api/orders: CreateOrder's INSERT ... ON CONFLICT (requested_by,
-- client_order_id) DO NOTHING and the SELECT of the first order. NULLs are distinct, so
-- orders without a client order id never collide.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_requested_by_client_order_id_key
    ON orders (requested_by, client_order_id);

-- GET /api/orders?symbol=&status= for risk/admin (FindOrders with both filters).
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_symbol_status_idx
    ON orders (symbol, status);

-- The pending queue by symbol (FindOrders?status=pending&symbol=, the orders_pending_total gauge
-- per symbol); partial, so it holds only the few undecided orders.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_symbol_idx
    ON orders (symbol, status) WHERE status = 'pending';

-- GET /api/orders/pending for risk/admin: FindPendingOrders, oldest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_created_idx
    ON orders (created_at, id) WHERE status = 'pending';

-- GET /api/orders/pending for a trader and the pending_orders count of Summary.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_requested_by_idx
    ON orders (requested_by, created_at) WHERE status = 'pending';

-- FindOrders?status= without a symbol; orders_pending_total / counts by status.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_idx
    ON orders (status);

-- Time-range reports and retention over orders by creation time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_at_idx
    ON orders (created_at);

-- "Recently changed orders" (decisions by time) for operations and reports.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_updated_at_idx
    ON orders (updated_at);

-- GET /api/orders for a trader: FindOrders keyset pagination over the caller's orders,
-- WHERE requested_by = $1 AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_requested_by_keyset_idx
    ON orders (requested_by, created_at DESC, id DESC);

-- GET /api/orders for risk/admin: FindOrders keyset pagination over all orders.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_keyset_idx
    ON orders (created_at DESC, id DESC);

-- One trade per order (ApproveOrder's exactly-once guarantee, second line of defence after the
-- conditional UPDATE) and the order -> trade lookup.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS trades_order_id_key
    ON trades (order_id);

-- Mark price: the LATERAL "latest trade of the symbol" in Positions/Summary
-- (WHERE symbol = $1 ORDER BY executed_at DESC, id DESC LIMIT 1).
CREATE INDEX CONCURRENTLY IF NOT EXISTS trades_symbol_executed_idx
    ON trades (symbol, executed_at DESC, id DESC);

-- GET /api/trades: FindTrades keyset pagination over the caller's trades, and the daily
-- realized P&L / trades-today of Summary and the daily loss check (user_id, executed_at >= today).
CREATE INDEX CONCURRENTLY IF NOT EXISTS trades_user_keyset_idx
    ON trades (user_id, executed_at DESC, id DESC);

-- Reuse detection and logout: revoke every token of a session.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_session_id_idx
    ON refresh_tokens (session_id);

-- Sessions of a user (revoking all logins of a user, ON DELETE CASCADE from users).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_user_id_idx
    ON sessions (user_id);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS sessions_user_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_session_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS trades_user_keyset_idx;
DROP INDEX CONCURRENTLY IF EXISTS trades_symbol_executed_idx;
DROP INDEX CONCURRENTLY IF EXISTS trades_order_id_key;
DROP INDEX CONCURRENTLY IF EXISTS orders_keyset_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_requested_by_keyset_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_updated_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_created_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_requested_by_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_created_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_symbol_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_status_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_requested_by_client_order_id_key;
