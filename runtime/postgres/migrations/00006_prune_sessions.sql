-- The indexes that let tradingd find ended logins to delete (postgres.SessionPruner) without
-- reading the tables. Both are partial, so they hold only what the pruner looks for and stay
-- small however long the tables get:
--
-- - A login that was revoked (logout, reuse of a refresh token, a change of roles) is found
--   by its revoked_at. Live logins are not in the index.
-- - A login that was not revoked ended when its current refresh token (the one not used yet:
--   exactly one per login, since a rotation marks the old one used and stores the new one in
--   the same transaction) expired. The index holds one entry per login, not one per token:
--   an index over every token's expires_at would make each round walk again the expired,
--   rotated tokens of logins still in use, which must stay (presenting one is reuse).
--
-- Built CONCURRENTLY outside a transaction, as in 00002 (whose comment explains the INVALID
-- leftover of a failed build, dropped first). The leftover is renamed and then dropped
-- CONCURRENTLY, as in 00005 (whose comment says why not with a plain DROP INDEX: every login
-- and every request's session check would queue behind it while a long transaction reads
-- sessions or refresh_tokens).

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
          AND c.relname IN ('sessions_revoked_at_idx', 'refresh_tokens_current_expires_at_idx')
    LOOP
        RAISE NOTICE 'setting aside invalid leftover index % to drop it', leftover;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP INDEX CONCURRENTLY IF EXISTS sessions_revoked_at_idx_invalid;
DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_current_expires_at_idx_invalid;

-- Revoked logins, oldest revocation first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_revoked_at_idx
    ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Each login's current refresh token by expiry. Its session_id is in the index so that the
-- pruner reads the logins from the index alone.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_current_expires_at_idx
    ON refresh_tokens (expires_at) INCLUDE (session_id) WHERE used_at IS NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_current_expires_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS sessions_revoked_at_idx;
