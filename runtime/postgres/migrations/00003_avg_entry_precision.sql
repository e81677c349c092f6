-- The average entry price is kept to 20 fractional digits (shown to 8; trading.AvgScale).
-- Rounded to 8, a position bought 1 at 100 and 2 at 101 and sold 3 at 101 realized
-- 0.99999999 for the 1.00000000 it made. Averages written before keep their 8 digits.
-- 12 integer digits hold any price under trading.MaxAmount (1e12).
--
-- Changing the type rewrites the table under an ACCESS EXCLUSIVE lock; positions holds one
-- row per user and symbol, so the rewrite is short, and approvals wait for it (their
-- transactions update positions), they do not fail.

-- +goose Up
ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(32,20);

-- +goose Down
ALTER TABLE positions ALTER COLUMN avg_entry_price TYPE numeric(20,8);
