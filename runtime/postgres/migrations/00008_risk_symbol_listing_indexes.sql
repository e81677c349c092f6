-- A risk or admin user's listing of one symbol, GET /api/orders?symbol= with or without
-- ?status=, had only orders_symbol_status_idx (symbol, status) to lead to the symbol, which
-- gives its orders in no order. Measured with EXPLAIN (ANALYZE, BUFFERS) on 200k orders
-- (40 symbols from 43% of the orders down to 0.16%, one of 40 orders and one traded only
-- long ago; 3% rejected, 20 pending), for the first pages and deep cursors:
--
-- * a symbol with 0.17-0.5% of the orders: the planner walked orders_keyset_idx newest
--   first and filtered on the symbol, or read every order of the symbol and sorted them:
--   215-423 buffers per page (up to 7 ms), where a page of the three busiest reads 5-8.
-- * the rejected orders of a symbol with 4-15% of the orders: every rejected order walked
--   newest first and filtered on the symbol, or all of the symbol's rejected orders read and
--   sorted, per page: 194-328 buffers.
--
-- One index cannot serve both: with (symbol, created_at DESC, id DESC) alone a symbol's
-- page reads at most 48 buffers, but the rejected orders of a symbol with 1.4-3.9% of the
-- orders 664-1380 (every rejected order and every order of the symbol, intersected and
-- sorted); with (symbol, status, created_at DESC, id DESC) alone a symbol and a status read
-- at most 64, but a symbol of 0.17-0.5% without a status still 215-562 (its orders of every
-- status, sorted). With both, every listing of a symbol reads 3-64 buffers per page at any
-- cursor depth (TestRiskSymbolListingPagesReadFewBuffers). The second index serves what
-- orders_symbol_status_idx served (its leading columns), so that one goes: 9 indexes on
-- orders instead of 8. Keeping 8 would take a listing of a symbol that merges one walk per
-- status (UNION ALL of three ordered, limited reads of the second index: 59 buffers for the
-- first page of a symbol with 0.3% of the orders, which read 409), a statement that must
-- name every status there is and would drop the orders of a status added later without a word.
--
-- What it costs the writes: an order is inserted into one more index, and so is each
-- decision (status is indexed, so an approval or rejection is never a HOT update). With the
-- indexes grown by the inserts (200k orders inserted after the migration, as in service), a
-- statement of 8 orders writes 81 WAL records and 9.8 kB instead of 73 and 8.5 kB, an
-- approval of 8 orders 77 and 8.2 kB instead of 69 and 7.0 kB; pgbench of such inserts
-- (4 clients, 5 alternated rounds of 15 s on a shared machine) did 0.97 of the rate without
-- them (per round 0.80-1.10: noise, the commits dominate). The two indexes take
-- about 200 bytes per order (17 + 23 MB at 200k orders, where the deduplicated (symbol,
-- status) took 1.5 MB).
--
-- The new indexes are built before the old one is dropped, so that the previous runtime,
-- which serves while this runs, always has an index for its listings. Built and dropped
-- CONCURRENTLY outside a transaction, as in 00002 (whose comment explains the INVALID
-- leftover of a failed build); the leftover is renamed and dropped CONCURRENTLY, as in 00005
-- (whose comment says why not with a plain DROP INDEX).

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
          AND c.relname IN ('orders_symbol_keyset_idx', 'orders_symbol_status_keyset_idx')
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_keyset_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_status_keyset_idx_invalid;

-- GET /api/orders?symbol= for risk/admin: FindOrders keyset pagination over the orders of
-- one symbol, WHERE symbol = $1 AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_symbol_keyset_idx
    ON orders (symbol, created_at DESC, id DESC);

-- GET /api/orders?symbol=&status= for risk/admin: the same within one status.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_symbol_status_keyset_idx
    ON orders (symbol, status, created_at DESC, id DESC);

DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_status_idx;

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
          AND c.relname = 'orders_symbol_status_idx'
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_status_idx_invalid;

-- As 00002 built it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_symbol_status_idx
    ON orders (symbol, status);

DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_status_keyset_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_symbol_keyset_idx;
