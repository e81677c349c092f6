package trading

import (
	"context"
	"regexp"
	"slices"
	"time"

	"github.com/google/uuid"
)

// Role is what a user may do. Roles are cumulative: risk can do what a trader can,
// admin what risk can.
type Role string

const (
	RoleTrader Role = "trader" // submits and sees its own orders, trades and positions
	RoleRisk   Role = "risk"   // additionally sees every order and decides pending ones
	RoleAdmin  Role = "admin"  // all of that and manages users
)

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleTrader, RoleRisk, RoleAdmin:
		return r, nil
	}
	return "", Errorf(EINVALID, "role must be one of trader, risk, admin")
}

// usernamePattern is what a username may be: one spelling on the command line, in a login's
// JSON and in the logs.
var usernamePattern = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// UsernameRule says what ValidUsername accepts, for messages.
const UsernameRule = "must be 1 to 64 characters of A-Z a-z 0-9 . _ @ -"

// ValidUsername reports whether s may name a new user.
func ValidUsername(s string) bool { return usernamePattern.MatchString(s) }

// User is an account that can log in.
type User struct {
	ID        uuid.UUID `json:"id"`
	Username  string    `json:"username"`
	Roles     []Role    `json:"roles"`
	CreatedAt time.Time `json:"created_at"`
}

// Principal is the authenticated caller of a request, taken from a verified access token.
type Principal struct {
	UserID   uuid.UUID
	Username string
	Roles    []Role
	// SessionID is the login the access token belongs to: ending the login (logout, or a
	// refresh token presented twice) ends its access tokens too. Nil in a token issued
	// before tokens carried it.
	SessionID uuid.UUID
}

// Has reports whether the principal holds role r.
func (p Principal) Has(r Role) bool { return slices.Contains(p.Roles, r) }

// CanSeeAll reports whether the principal sees every user's orders (risk and admin).
func (p Principal) CanSeeAll() bool { return p.Has(RoleRisk) || p.Has(RoleAdmin) }

// CanDecide reports whether the principal may approve or reject orders.
func (p Principal) CanDecide() bool { return p.CanSeeAll() }

// ErrMayNotDecide is the answer (EFORBIDDEN) to a decision by someone who may not decide:
// by the token's roles (the handler, the service) or by the user's roles now (the database).
func ErrMayNotDecide() error {
	return Errorf(EFORBIDDEN, "only the risk or admin role may decide orders")
}

// UserService stores users and checks their passwords.
type UserService interface {
	// CreateUser hashes password (bcrypt) and stores the user; ECONFLICT when the
	// username is taken, EINVALID for a bad username or a password bcrypt refuses.
	CreateUser(ctx context.Context, username, password string, role Role) (*User, error)
	// EnsureUser creates the user when no user of that name exists and reports whether it did.
	EnsureUser(ctx context.Context, username, password string, role Role) (bool, error)
	// Authenticate returns the user when the password matches, else EUNAUTHORIZED.
	// An unknown username costs the same time as a wrong password.
	Authenticate(ctx context.Context, username, password string) (*User, error)
	// FindUserByID returns the user or ENOTFOUND.
	FindUserByID(ctx context.Context, id uuid.UUID) (*User, error)
}

// Session is one login: the chain of refresh tokens issued since a password was checked.
// Refresh tokens are stored only as hashes.
type SessionService interface {
	// CreateSession starts a login of the user whose roles (read with the password) its
	// tokens will carry, stores the first refresh token's hash and returns the login's id:
	// ENOTFOUND when the user is gone, ECONFLICT when the roles changed meanwhile (a change
	// of roles ends logins; one started with the old roles must not outlive it).
	CreateSession(ctx context.Context, userID uuid.UUID, roles []Role, tokenHash []byte, expiresAt time.Time) (sessionID uuid.UUID, err error)
	// RotateRefreshToken marks the token with oldHash used and stores newHash in the same
	// login, returning the user (as it is now: its roles go into the new access token) and
	// the login. A token that was already rotated (reuse) revokes the whole login and
	// returns EUNAUTHORIZED with the login's id; an unknown, expired or revoked token is
	// EUNAUTHORIZED. The user is read in the rotation's transaction: read after it, a
	// failure of that read answered 503 for a token already used, and the retry the 503
	// asks for was taken for reuse and ended the login.
	RotateRefreshToken(ctx context.Context, oldHash, newHash []byte, expiresAt time.Time) (user *User, sessionID uuid.UUID, err error)
	// RevokeSession ends the login that the token belongs to and returns its id; an unknown
	// token is not an error (uuid.Nil).
	RevokeSession(ctx context.Context, tokenHash []byte) (sessionID uuid.UUID, err error)
	// SessionActive reports whether the login has not ended.
	SessionActive(ctx context.Context, sessionID uuid.UUID) (bool, error)
}
