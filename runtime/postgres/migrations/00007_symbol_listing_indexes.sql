-- A trader's listing of one symbol, GET /api/orders?symbol= and GET /api/trades?symbol=, had
-- no index that led to it: it walked the trader's orders (or trades) newest first and
-- filtered on the symbol, or read every order of the symbol and filtered on the trader. A
-- symbol that is busy overall but rare for the trader read thousands of buffers per page.
-- Measured with EXPLAIN (ANALYZE, BUFFERS) on 200k orders and 198k trades (40 traders, 30
-- symbols; a heavy trader with 26k orders, 221 of them in a symbol with 28k orders):
--
-- * orders of that symbol: 964 buffers per page (847 and 9-12 ms at the third page, where
--   the planner walked orders_keyset_idx); a light trader (2.7k orders, 64 in the busiest
--   symbol): 1708. Through orders_requested_by_symbol_keyset_idx: 51-54, 0.03 ms.
-- * trades of that symbol: 598-797 buffers; of a symbol they traded a few times: 1695; the
--   light trader's: 1570. Through trades_user_symbol_keyset_idx: 24-54, 0.03 ms.
--
-- What it costs the writes: one more entry per order and per trade. A statement of 8 orders
-- and their 8 trades writes 113 WAL records instead of 97 and touches 306 buffers instead of
-- 258; pgbench of such statements (8 clients, on those orders and more) did 0.89-0.95 of the
-- rate without the indexes, and BenchmarkCreateOrder and BenchmarkApproveOrder, alternated
-- with a build without this migration (13 rounds), 0.98 (per round 0.5-1.5: noise).
--
-- The indexes alone were not enough where a trader and a symbol each make up a large share
-- of the rows (a market maker with half of the orders, a symbol with a third): PostgreSQL
-- estimates trader AND symbol as if the two were independent (a sixth of the table), so it
-- expected the page within the first few hundred orders of orders_keyset_idx and walked that
-- instead, filtering 20k orders for a symbol the trader traded once in 400 (454 buffers per
-- page; TestTraderSymbolListingPagesReadFewBuffers).
-- Statistics on the pair (its most common combinations, built by ANALYZE) give the planner
-- the real share, and it takes the new index (54). ANALYZE of those two columns here builds
-- them at once (0.4-0.6 s on 700k rows, no lock that reads or writes wait for); later ones
-- come with autovacuum's.
--
-- No index goes: orders_requested_by_keyset_idx and trades_user_keyset_idx still serve the
-- listings without a symbol (and the day's trades of Summary and the daily loss check), and
-- the symbol-first indexes the risk desk's listings and the marks.
--
-- Built CONCURRENTLY outside a transaction, as in 00002 (whose comment explains the INVALID
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
          AND c.relname IN ('orders_requested_by_symbol_keyset_idx', 'trades_user_symbol_keyset_idx')
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS orders_requested_by_symbol_keyset_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS trades_user_symbol_keyset_idx_invalid;

-- GET /api/orders?symbol= for a trader: FindOrders keyset pagination over the caller's
-- orders of one symbol (with ?status= too, filtered on the page's rows).
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_requested_by_symbol_keyset_idx
    ON orders (requested_by, symbol, created_at DESC, id DESC);

-- GET /api/trades?symbol=: FindTrades keyset pagination over the caller's trades of one symbol.
CREATE INDEX CONCURRENTLY IF NOT EXISTS trades_user_symbol_keyset_idx
    ON trades (user_id, symbol, executed_at DESC, id DESC);

CREATE STATISTICS IF NOT EXISTS orders_requested_by_symbol_stats (mcv) ON requested_by, symbol FROM orders;
CREATE STATISTICS IF NOT EXISTS trades_user_symbol_stats (mcv) ON user_id, symbol FROM trades;
ANALYZE orders (requested_by, symbol);
ANALYZE trades (user_id, symbol);

-- +goose Down
DROP STATISTICS IF EXISTS trades_user_symbol_stats;
DROP STATISTICS IF EXISTS orders_requested_by_symbol_stats;
DROP INDEX CONCURRENTLY IF EXISTS trades_user_symbol_keyset_idx;
DROP INDEX CONCURRENTLY IF EXISTS orders_requested_by_symbol_keyset_idx;
