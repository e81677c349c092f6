-- A change of a user's roles ends every login of the user. Roles travel in the access token
-- (its claims are what a request is authorized by), so without this a risk user demoted to
-- trader kept approving orders until the token expired (up to ACCESS_TOKEN_TTL), and a
-- refresh issued new tokens with the old roles' login. A trigger, not application code:
-- roles are changed by hand in SQL (tradingd only adds users), and that must take effect.
-- The replicas see the login ended within their session check period (5 s) and refuse its
-- tokens; the user logs in again and gets the new roles. A login being made while the roles
-- change is handled by CreateSession (it locks the user's row and checks the roles).
-- The function runs with the search_path of this migration (FROM CURRENT), so an UPDATE by
-- hand from a session with another search_path ends the logins of this schema's sessions.
--
-- Idempotent (CREATE OR REPLACE, DROP ... IF EXISTS), like every file here.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION end_logins_on_role_change() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE sessions SET revoked_at = now() WHERE user_id = NEW.id AND revoked_at IS NULL;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS users_roles_end_logins ON users;
CREATE TRIGGER users_roles_end_logins AFTER UPDATE OF roles ON users
    FOR EACH ROW WHEN (OLD.roles IS DISTINCT FROM NEW.roles)
    EXECUTE FUNCTION end_logins_on_role_change();

-- +goose Down
DROP TRIGGER IF EXISTS users_roles_end_logins ON users;
DROP FUNCTION IF EXISTS end_logins_on_role_change();
