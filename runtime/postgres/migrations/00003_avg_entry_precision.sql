-- The average entry price is kept to 20 fractional digits (shown to 8; trading.AvgScale).
-- Rounded to 8, a position bought 1 at 100 and 2 at 101 and sold 3 at 101 realized
-- 0.99999999 for the 1.00000000 it made. Averages written before keep their 8 digits.
-- 12 integer digits hold any price under trading.MaxAmount (1e12).
--
-- Changing the type rewrites the table under an ACCESS EXCLUSIVE lock while the previous
-- runtime serves. The rewrite itself is short (about 1.5 s for a million positions, during
-- which reads of positions wait and approvals may give up after their 1 s lock wait: 503).
-- Waiting for the lock is what must stay short: a transaction holding any lock on positions
-- (a backup's pg_dump, a report) would make the ALTER wait, and every statement on positions
-- would queue behind the waiting ALTER, stalling the runtime for as long as that transaction
-- lasts. So the lock is asked for in attempts of 100 ms (lock_timeout), with pauses between
-- them that let the queue through; after 5 minutes the migration fails, the version stays
-- unrecorded and the old runtime keeps serving (the runbook's "a lock held").
--
-- The previous runtime's prepared statements that return avg_entry_price fail once per
-- pooled connection afterwards ("cached plan must not change result type", a 500 each)
-- before pgx prepares them again.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '5 minutes';
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    LOOP
        BEGIN
            ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(32,20);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF clock_timestamp() > deadline THEN
                RAISE EXCEPTION 'positions is locked by another transaction (see pg_locks): gave up after 5 minutes'
                    USING ERRCODE = 'lock_not_available';
            END IF;
            PERFORM pg_sleep(0.9);
        END;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(20,8);
