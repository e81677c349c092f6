-- The tables of tradingd. Money and quantities are NUMERIC(20,8) (trading.Scale = 8);
-- realized P&L and position quantities get NUMERIC(30,8) because a single trade can realize
-- up to 1e6 (quantity) * 1e6 (price) = 1e12, which overflows the 12 integer digits of
-- NUMERIC(20,8), and a position accumulates many trades.
-- Indexes other than primary keys live in 00002 (built CONCURRENTLY, outside a transaction).

-- +goose Up
CREATE TABLE users (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text        NOT NULL CONSTRAINT users_username_key UNIQUE
                              CHECK (char_length(username) BETWEEN 1 AND 64),
    password_hash text        NOT NULL,
    roles         text[]      NOT NULL
                              CHECK (cardinality(roles) > 0 AND roles <@ ARRAY['trader', 'risk', 'admin']),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- A session is one login: the chain of refresh tokens issued since a password was checked.
-- Revoking it (logout, or reuse of a rotated token) ends every token of the chain.
CREATE TABLE sessions (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Refresh tokens are stored only as a hash (SHA-256 of the token, computed by the caller).
-- used_at is set when the token was rotated; presenting it again is reuse.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE TABLE orders (
    id              uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    client_order_id text          CHECK (char_length(client_order_id) BETWEEN 1 AND 64),
    symbol          text          NOT NULL,
    side            text          NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        numeric(20,8) NOT NULL CHECK (quantity > 0),
    price           numeric(20,8) NOT NULL CHECK (price > 0),
    status          text          NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'approved', 'rejected')),
    requested_by    uuid          NOT NULL REFERENCES users (id),
    decided_by      uuid          REFERENCES users (id),
    decision_reason text,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    -- four eyes, also for anyone writing SQL by hand
    CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);

-- One trade per approved order (unique index on order_id in 00002), at the order's price.
CREATE TABLE trades (
    id           uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id     uuid          NOT NULL REFERENCES orders (id),
    user_id      uuid          NOT NULL REFERENCES users (id),
    symbol       text          NOT NULL,
    side         text          NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity     numeric(20,8) NOT NULL CHECK (quantity > 0),
    price        numeric(20,8) NOT NULL CHECK (price > 0),
    realized_pnl numeric(30,8) NOT NULL DEFAULT 0,
    executed_at  timestamptz   NOT NULL DEFAULT now()
);

-- The average-cost position of a user in a symbol; quantity is signed (negative is short).
CREATE TABLE positions (
    user_id         uuid          NOT NULL REFERENCES users (id),
    symbol          text          NOT NULL,
    quantity        numeric(30,8) NOT NULL DEFAULT 0,
    avg_entry_price numeric(20,8) NOT NULL DEFAULT 0 CHECK (avg_entry_price >= 0),
    realized_pnl    numeric(30,8) NOT NULL DEFAULT 0,
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, symbol)
);

-- +goose Down
DROP TABLE positions;
DROP TABLE trades;
DROP TABLE orders;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE users;
