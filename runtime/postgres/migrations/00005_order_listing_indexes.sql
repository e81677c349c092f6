-- The indexes of orders are the ones the statements read. Measured with EXPLAIN (ANALYZE,
-- BUFFERS) on 200k orders (199.6k approved, 410 rejected, 14 pending, 61 users):
--
-- * A risk user's GET /api/orders?status=rejected (newest first, keyset) read every rejected
--   order through orders_status_idx and sorted them: 418 buffers and 10-14 ms per page, growing
--   with the number of such orders, and the same again for every page of a deep cursor. Without
--   orders_status_idx it walks the keyset index and filters, which for a rare status reads the
--   table. (status, created_at DESC, id DESC) gives every status listing its page in order:
--   54 buffers, 0.4 ms; 5 for approved, 15 for pending.
-- * That index also serves everything orders_pending_created_idx and orders_pending_symbol_idx
--   served (the pending queue oldest first is its pending range read backward: 4 buffers;
--   ?status=pending&symbol= filters the few pending orders; the pending count is an index-only
--   scan), so those two go too. Every order is inserted pending, so each partial index cost an
--   insert as a full one does.
-- * orders_created_at_idx (time-range reports) and orders_updated_at_idx (recently changed
--   orders) serve no statement of tradingd; orders_keyset_idx covers created_at. A report
--   that needs updated_at can build its own index.
--
-- The new index is built before the old ones are dropped, so that the previous runtime, which
-- serves while this runs, always has an index for its listings. Built and dropped
-- CONCURRENTLY (no lock that blocks writes), hence NO TRANSACTION, and idempotent like 00002:
-- a failure leaves the version unrecorded and the next `tradingd migrate` runs the whole file
-- again, after dropping an INVALID leftover of a failed concurrent build.
--
-- That leftover is renamed to NAME_invalid in a DO block (a function body: DROP INDEX
-- CONCURRENTLY cannot run there) and dropped CONCURRENTLY by the statement after it. 00002
-- drops it with a plain DROP INDEX instead, whose ACCESS EXCLUSIVE lock on the table waits
-- for every transaction reading it (pg_dump, a report: often what made the first build fail),
-- and every statement of the runtime on the table queues behind that lock meanwhile. A
-- rename of an index takes SHARE UPDATE EXCLUSIVE, which no read or write waits for. NAME is
-- built only once NAME_invalid has been dropped, so the rename never finds its name taken
-- (TestInvalidLeftoverDoesNotBlockTheRuntime).

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    leftover name;
BEGIN
    FOR leftover IN
        SELECT c.relname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = current_schema()::regnamespace
          AND NOT i.indisvalid
          AND c.relname = 'orders_status_keyset_idx'
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS orders_status_keyset_idx_invalid;

-- GET /api/orders?status= for risk/admin (and for a trader when it is the rarer filter):
-- FindOrders keyset pagination within one status, WHERE status = $1 AND (created_at, id) <
-- ($2, $3) ORDER BY created_at DESC, id DESC; GET /api/orders/pending for risk/admin
-- (FindPendingOrders, oldest first: read backward); the orders_pending_total gauge.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_keyset_idx
    ON orders (status, created_at DESC, id DESC);

DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_created_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_updated_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_created_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_symbol_idx;

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    leftover name;
BEGIN
    FOR leftover IN
        SELECT c.relname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = current_schema()::regnamespace
          AND NOT i.indisvalid
          AND c.relname IN ('orders_status_idx', 'orders_created_at_idx', 'orders_updated_at_idx',
                            'orders_pending_created_idx', 'orders_pending_symbol_idx')
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS orders_created_at_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS orders_updated_at_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_created_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS orders_pending_symbol_idx_invalid;

-- As 00002 built them.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_symbol_idx
    ON orders (symbol, status) WHERE status = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_created_idx
    ON orders (created_at, id) WHERE status = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_idx
    ON orders (status);
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_at_idx
    ON orders (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_updated_at_idx
    ON orders (updated_at);

DROP INDEX CONCURRENTLY IF EXISTS orders_status_keyset_idx;
