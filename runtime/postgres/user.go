package postgres

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	trading "github.com/findmy/trading-operator/runtime"
)

// BcryptCost is the work factor of stored password hashes (about 60 ms on a small core).
const BcryptCost = 10

// UserService implements trading.UserService.
type UserService struct{ db *DB }

var _ trading.UserService = (*UserService)(nil)

// NewUserService returns the user store.
func NewUserService(db *DB) *UserService { return &UserService{db: db} }

const userColumns = `id, username, roles, created_at`

func scanUser(row pgx.Row, extra ...any) (*trading.User, error) {
	var u trading.User
	var roles []string
	if err := row.Scan(append([]any{&u.ID, &u.Username, &roles, &u.CreatedAt}, extra...)...); err != nil {
		return nil, err
	}
	for _, r := range roles {
		u.Roles = append(u.Roles, trading.Role(r))
	}
	u.CreatedAt = u.CreatedAt.UTC()
	return &u, nil
}

// hashPassword validates and hashes a new password. bcrypt reads only the first 72 bytes,
// so a longer password is refused (422) rather than silently truncated. A password that
// is not UTF-8 (from a Latin-1 terminal, or raw bytes piped into `tradingd user add`) is
// refused too: logins carry it in JSON, which holds text, so it would arrive with U+FFFD
// in place of those bytes and never match.
func hashPassword(password string) ([]byte, error) {
	switch {
	case password == "":
		return nil, trading.Invalid(trading.FieldError{Field: "password", Message: "is required"})
	case !utf8.ValidString(password):
		return nil, trading.Invalid(trading.FieldError{Field: "password", Message: "must be UTF-8 text"})
	case len(password) > 72:
		return nil, trading.Invalid(trading.FieldError{Field: "password", Message: "must be at most 72 bytes"})
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), BcryptCost)
	if err != nil {
		return nil, &trading.Error{Code: trading.EINTERNAL, Message: "internal error", Err: err}
	}
	return hash, nil
}

func checkNewUser(username string, role trading.Role) error {
	var fields []trading.FieldError
	if !trading.ValidUsername(username) {
		fields = append(fields, trading.FieldError{Field: "username", Message: trading.UsernameRule})
	}
	if _, err := trading.ParseRole(string(role)); err != nil {
		fields = append(fields, trading.FieldError{Field: "role", Message: "must be one of trader, risk, admin"})
	}
	if len(fields) > 0 {
		return trading.Invalid(fields...)
	}
	return nil
}

// CreateUser stores a new user; ECONFLICT when the username is taken.
func (s *UserService) CreateUser(ctx context.Context, username, password string, role trading.Role) (*trading.User, error) {
	if err := checkNewUser(username, role); err != nil {
		return nil, err
	}
	hash, err := hashPassword(password) // before the query timeout starts: bcrypt is slow on purpose
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	u, err := scanUser(s.db.pool.QueryRow(ctx, `
		INSERT INTO users (username, password_hash, roles) VALUES ($1, $2, $3)
		RETURNING `+userColumns, username, string(hash), []string{string(role)}))
	if trading.ErrorCode(s.db.mapError(err)) == trading.ECONFLICT {
		return nil, &trading.Error{Code: trading.ECONFLICT, Message: "username is taken", Err: err}
	}
	if err != nil {
		return nil, s.db.mapError(err)
	}
	return u, nil
}

// EnsureUser creates the user unless one of that name exists (bootstrap and demo users); it
// never changes an existing user's password or role.
func (s *UserService) EnsureUser(ctx context.Context, username, password string, role trading.Role) (bool, error) {
	if err := checkNewUser(username, role); err != nil {
		return false, err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return false, err
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	tag, err := s.db.pool.Exec(ctx, `
		INSERT INTO users (username, password_hash, roles) VALUES ($1, $2, $3)
		ON CONFLICT (username) DO NOTHING`, username, string(hash), []string{string(role)})
	if err != nil {
		return false, s.db.mapError(err)
	}
	return tag.RowsAffected() == 1, nil
}

// dummyHash is compared against when the username is unknown, so that an unknown user costs
// the same bcrypt work as a wrong password and usernames cannot be probed by timing.
var dummyHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("not-a-real-password-only-for-timing"), BcryptCost)
	if err != nil {
		panic(err)
	}
	return h
})

func errBadCredentials() error {
	return trading.Errorf(trading.EUNAUTHORIZED, "invalid username or password")
}

// Authenticate returns the user whose password matches, else EUNAUTHORIZED.
func (s *UserService) Authenticate(ctx context.Context, username, password string) (*trading.User, error) {
	// No user has such a name or password: a NUL cannot be stored in text (the query would
	// fail, a 500), and bcrypt ignores every byte after the 72nd (a stored 72-byte password
	// followed by anything would match), which user creation refuses for that reason. Wrong
	// credentials, after the same work as an unknown user.
	if strings.ContainsRune(username, 0) || len(password) > 72 {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return nil, errBadCredentials()
	}
	qctx, cancel := s.db.bound(ctx)
	var hash string
	u, err := scanUser(s.db.pool.QueryRow(qctx, `
		SELECT `+userColumns+`, password_hash FROM users WHERE username = $1`, username), &hash)
	cancel()
	if errors.Is(err, pgx.ErrNoRows) {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return nil, errBadCredentials()
	}
	if err != nil {
		return nil, s.db.mapError(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil {
		return nil, errBadCredentials()
	}
	return u, nil
}

// FindUserByID returns the user or ENOTFOUND.
func (s *UserService) FindUserByID(ctx context.Context, id uuid.UUID) (*trading.User, error) {
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	u, err := scanUser(s.db.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, trading.Errorf(trading.ENOTFOUND, "user not found")
	}
	return u, s.db.mapError(err)
}

// SessionService implements trading.SessionService: refresh tokens stored as hashes, rotated on
// every use, with reuse detection.
type SessionService struct{ db *DB }

var _ trading.SessionService = (*SessionService)(nil)

// NewSessionService returns the refresh-token store.
func NewSessionService(db *DB) *SessionService { return &SessionService{db: db} }

func errBadRefreshToken() error {
	return trading.Errorf(trading.EUNAUTHORIZED, "invalid or expired refresh token")
}

// CreateSession starts a login with its first refresh token, if the user still has the
// roles its tokens will carry. The user's row is locked (FOR SHARE) while the login is made:
// a change of roles, which ends the user's logins (migration 00004), either waits for this
// one and ends it too, or commits first and this finds the roles changed. Checked any other
// way, a login whose password was checked just before a demotion would outlive it with the
// old roles.
func (s *SessionService) CreateSession(ctx context.Context, userID uuid.UUID, roles []trading.Role, tokenHash []byte, expiresAt time.Time) (uuid.UUID, error) {
	if len(tokenHash) == 0 {
		return uuid.Nil, trading.Errorf(trading.EINTERNAL, "empty refresh token hash")
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	// One statement, so the session and its first token appear together or not at all.
	var same *bool
	var id *uuid.UUID
	err := s.db.pool.QueryRow(ctx, `
		WITH u AS (SELECT id, roles = $4::text[] AS same FROM users WHERE id = $1 FOR SHARE),
		s AS (INSERT INTO sessions (user_id) SELECT id FROM u WHERE same RETURNING id),
		t AS (INSERT INTO refresh_tokens (token_hash, session_id, expires_at) SELECT $2, s.id, $3 FROM s RETURNING session_id)
		SELECT (SELECT same FROM u), (SELECT session_id FROM t)`, userID, tokenHash, expiresAt, names).Scan(&same, &id)
	switch {
	case err != nil:
		return uuid.Nil, s.db.mapError(err)
	case same == nil:
		return uuid.Nil, trading.Errorf(trading.ENOTFOUND, "user not found")
	case !*same || id == nil:
		return uuid.Nil, trading.Errorf(trading.ECONFLICT, "the user's roles changed during the login; log in again")
	}
	return *id, nil
}

// SessionActive reports whether the login has not been revoked; an unknown one has ended.
func (s *SessionService) SessionActive(ctx context.Context, sessionID uuid.UUID) (bool, error) {
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	var active bool
	err := s.db.pool.QueryRow(ctx, `SELECT revoked_at IS NULL FROM sessions WHERE id = $1`, sessionID).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return active, s.db.mapError(err)
}

// RotateRefreshToken exchanges the token with oldHash for newHash in the same login.
//
// The token row is locked (FOR UPDATE), so two concurrent uses of one token serialize: the
// first rotates, the second finds it used and is treated as reuse, which revokes the login.
// Revocation is committed even though the call returns EUNAUTHORIZED.
func (s *SessionService) RotateRefreshToken(ctx context.Context, oldHash, newHash []byte, expiresAt time.Time) (*trading.User, uuid.UUID, error) {
	var (
		user      *trading.User
		sessionID uuid.UUID
		denied    bool
		revoked   bool // by this call: the token was reused
	)
	err := s.db.inTx(ctx, pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
		denied, revoked = false, false // a second run (inTx) starts afresh
		var (
			usedAt        *time.Time
			revokedAt     *time.Time
			expiredByTime bool
		)
		// The user is read here, not after the commit (see trading.SessionService). A deleted
		// user's logins are deleted with it (ON DELETE CASCADE): no row, as for a token never issued.
		var err error
		user, err = scanUser(tx.QueryRow(ctx, `
			SELECT u.id, u.username, u.roles, u.created_at, t.session_id, t.used_at, s.revoked_at, t.expires_at <= now()
			FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
			WHERE t.token_hash = $1
			FOR UPDATE OF t, s`, oldHash),
			&sessionID, &usedAt, &revokedAt, &expiredByTime)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			denied = true
			return nil
		case err != nil:
			return err
		case revokedAt != nil:
			denied = true
			return nil
		case usedAt != nil:
			// Reuse: someone holds a token that was already exchanged. Either the client or
			// an attacker has a stolen copy; end the whole login so neither can go on. Also
			// when the old token has expired since: a copy replayed late is still a copy.
			denied, revoked = true, true
			_, err := tx.Exec(ctx, `UPDATE sessions SET revoked_at = now() WHERE id = $1`, sessionID)
			return err
		case expiredByTime:
			denied = true
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1`, oldHash); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)`,
			newHash, sessionID, expiresAt)
		return err
	})
	if err != nil {
		return nil, uuid.Nil, err
	}
	if revoked {
		return nil, sessionID, errBadRefreshToken()
	}
	if denied {
		return nil, uuid.Nil, errBadRefreshToken()
	}
	return user, sessionID, nil
}

// RevokeSession ends the login of the token (logout) and returns its id; an unknown token
// is not an error.
func (s *SessionService) RevokeSession(ctx context.Context, tokenHash []byte) (uuid.UUID, error) {
	ctx, cancel := s.db.bound(ctx)
	defer cancel()
	var id uuid.UUID
	err := s.db.pool.QueryRow(ctx, `
		WITH t AS (SELECT session_id FROM refresh_tokens WHERE token_hash = $1),
		     revoked AS (
				UPDATE sessions SET revoked_at = now()
				WHERE revoked_at IS NULL AND id = (SELECT session_id FROM t))
		SELECT session_id FROM t`, tokenHash).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, nil
	}
	return id, s.db.mapError(err)
}
