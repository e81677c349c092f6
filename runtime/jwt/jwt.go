// Package jwt issues and verifies the access tokens of tradingd (HS256 JWTs with a `kid`
// header) and makes the opaque refresh tokens, which are deliberately not JWTs: a refresh
// token is 32 random bytes that the database knows only by its SHA-256.
package jwt

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/maypok86/otter/v2"

	trading "github.com/findmy/trading-operator/runtime"
)

// MinSecretBytes is the shortest HS256 secret accepted: the hash's own size, as RFC 7518
// section 3.2 asks.
const MinSecretBytes = 32

// accessUse marks a token as an access token so that no other token this service might
// sign one day (refresh, password reset) can be replayed as one.
const accessUse = "access"

var kidPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Key is one HS256 secret and the id that names it in a token's `kid` header.
type Key struct {
	ID     string
	Secret []byte
}

// KeySet holds the keys that verify tokens; the first one also signs. Rotation: put the
// new key first and keep the old one after it until the old tokens have expired.
type KeySet struct {
	keys []Key
	byID map[string][]byte
}

// ParseKeys reads JWT_KEYS: `kid:base64secret` pairs separated by commas or newlines.
// Secrets may use standard or URL base64, padded or not, and must decode to at least
// MinSecretBytes. Errors name JWT_KEYS and the entry by its position, never a secret, nor
// a key id: with id and secret swapped ("secret:k1"), a URL-base64 secret is a well-formed
// id, and echoing "the id" printed the secret.
func ParseKeys(s string) (*KeySet, error) {
	ks := &KeySet{byID: map[string][]byte{}}
	at := map[string]int{} // kid -> entry number
	n := 0
	for _, entry := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		n++
		kid, secret, ok := strings.Cut(entry, ":")
		kid, secret = strings.TrimSpace(kid), strings.TrimSpace(secret)
		if !ok || secret == "" {
			return nil, fmt.Errorf("JWT_KEYS: entry %d is not kid:base64secret", n)
		}
		if !kidPattern.MatchString(kid) {
			return nil, fmt.Errorf("JWT_KEYS: the key id of entry %d must be 1 to 64 characters of A-Z a-z 0-9 . _ - (kid:base64secret: the id comes first)", n)
		}
		if first, dup := at[kid]; dup {
			return nil, fmt.Errorf("JWT_KEYS: entries %d and %d have the same key id", first, n)
		}
		raw, err := decodeSecret(secret)
		if err != nil {
			return nil, fmt.Errorf("JWT_KEYS: the secret of entry %d is not base64 (kid:base64secret: the secret comes second)", n)
		}
		if len(raw) < MinSecretBytes {
			return nil, fmt.Errorf("JWT_KEYS: the secret of entry %d has %d bytes, at least %d are needed", n, len(raw), MinSecretBytes)
		}
		ks.keys = append(ks.keys, Key{ID: kid, Secret: raw})
		ks.byID[kid] = raw
		at[kid] = n
	}
	if len(ks.keys) == 0 {
		return nil, errors.New("JWT_KEYS: no key given (kid:base64secret)")
	}
	return ks, nil
}

func decodeSecret(s string) ([]byte, error) {
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		var b []byte
		if b, err = enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, err
}

// SigningKeyID is the kid of the key that signs new tokens.
func (ks *KeySet) SigningKeyID() string { return ks.keys[0].ID }

// Len is the number of keys.
func (ks *KeySet) Len() int { return len(ks.keys) }

// Claims are the claims of an access token.
type Claims struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
	// Use is "access" in the tokens we issue. Verification refuses any other value but
	// accepts a token without it: the contract's claims do not include it, and refresh
	// tokens are opaque strings, never JWTs, so there is nothing else to tell apart.
	Use string `json:"token_use"`
	// SessionID is the login the token belongs to (trading.Principal.SessionID).
	SessionID string `json:"sid,omitempty"`
	gojwt.RegisteredClaims
}

// Authority issues and verifies access tokens for one issuer and audience.
type Authority struct {
	keys      *KeySet
	issuer    string
	audience  string
	ttl       time.Duration
	parser    *gojwt.Parser
	now       func() time.Time
	signingID string

	// verified remembers tokens that passed Verify, so that a client's every request does
	// not decode the same JSON and HMAC again (a quarter of a cached read's CPU). Keyed by
	// the token's SHA-256, so a lookup compares no secret bytes; only tokens that verified
	// get in, so forged tokens cannot fill it; each hit still checks exp against the clock.
	// The key set never changes in a running process, so a cached verdict cannot outlive
	// its key.
	verified *otter.Cache[[sha256.Size]byte, verifiedToken]
}

type verifiedToken struct {
	principal trading.Principal
	expires   time.Time // exp
}

// verifiedCacheSize bounds the verified-token cache: each entry is about 200 bytes, and one
// entry per active session is plenty (an entry that is evicted is simply verified again).
const verifiedCacheSize = 50_000

// verifiedCacheTTL caps how long a verdict is reused; exp is checked on every hit anyway.
const verifiedCacheTTL = 5 * time.Minute

// iatSkew tolerates a verifier whose clock is a little behind the issuer's: a token's iat
// may be that far in the future. exp has no leeway: a token is refused once it expires,
// as a client told expires_in expects (replicas' clocks are NTP-synchronized to well under
// a second, and exp is whole seconds, rounded down).
const iatSkew = 5 * time.Second

// NewAuthority returns an Authority that signs with the first key of keys and accepts
// tokens of issuer for audience that any key of keys signed.
func NewAuthority(keys *KeySet, issuer, audience string, accessTTL time.Duration) *Authority {
	a := &Authority{
		keys:      keys,
		issuer:    issuer,
		audience:  audience,
		ttl:       accessTTL,
		now:       time.Now,
		signingID: keys.SigningKeyID(),
		verified: otter.Must(&otter.Options[[sha256.Size]byte, verifiedToken]{
			MaximumSize:      verifiedCacheSize,
			ExpiryCalculator: otter.ExpiryWriting[[sha256.Size]byte, verifiedToken](verifiedCacheTTL),
		}),
	}
	// The algorithm is pinned: a token's own alg header never chooses how it is checked,
	// which is what defeats alg=none and RS/HS confusion. Strict decoding refuses base64 whose
	// unused trailing bits are set: otherwise a token with its last character changed (say B
	// for A) decodes to the same signature and passes, so one token had several spellings.
	a.parser = gojwt.NewParser(
		gojwt.WithValidMethods([]string{gojwt.SigningMethodHS256.Alg()}),
		gojwt.WithStrictDecoding(),
		gojwt.WithExpirationRequired(),
		gojwt.WithIssuer(issuer),
		gojwt.WithAudience(audience),
		gojwt.WithTimeFunc(func() time.Time { return a.now() }),
	)
	return a
}

// AccessTTL is how long an access token lives (expires_in of a login).
func (a *Authority) AccessTTL() time.Duration { return a.ttl }

// Issue signs an access token for p and says how long it is valid.
func (a *Authority) Issue(p trading.Principal) (string, time.Duration, error) {
	now := a.now().UTC().Truncate(time.Second)
	roles := make([]string, len(p.Roles))
	for i, r := range p.Roles {
		roles[i] = string(r)
	}
	claims := Claims{
		Name:  p.Username,
		Roles: roles,
		Use:   accessUse,
		RegisteredClaims: gojwt.RegisteredClaims{
			Subject:   p.UserID.String(),
			Issuer:    a.issuer,
			Audience:  gojwt.ClaimStrings{a.audience},
			IssuedAt:  gojwt.NewNumericDate(now),
			ExpiresAt: gojwt.NewNumericDate(now.Add(a.ttl)),
			ID:        uuid.NewString(),
		},
	}
	if p.SessionID != uuid.Nil {
		claims.SessionID = p.SessionID.String()
	}
	t := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claims)
	t.Header["kid"] = a.signingID
	s, err := t.SignedString(a.keys.byID[a.signingID])
	if err != nil {
		return "", 0, fmt.Errorf("sign access token: %w", err)
	}
	return s, a.ttl, nil
}

// Verify checks an access token (signature by the key its kid names, algorithm, exp, iat,
// iss, aud, token use) and returns the principal it carries. Every failure is EUNAUTHORIZED
// with a message that does not help an attacker tell the cases apart.
func (a *Authority) Verify(token string) (trading.Principal, error) {
	sum := sha256.Sum256([]byte(token))
	if v, ok := a.verified.GetIfPresent(sum); ok {
		if a.now().Before(v.expires) {
			return v.principal, nil
		}
		a.verified.Invalidate(sum) // expired: the full check below says so
	}
	p, exp, err := a.verify(token)
	if err != nil {
		return trading.Principal{}, err
	}
	a.verified.Set(sum, verifiedToken{principal: p, expires: exp})
	return p, nil
}

// verify is the full check of Verify, without the cache; it also returns the token's exp.
func (a *Authority) verify(token string) (trading.Principal, time.Time, error) {
	var claims Claims
	_, err := a.parser.ParseWithClaims(token, &claims, a.keyFor)
	if err != nil {
		if errors.Is(err, gojwt.ErrTokenExpired) {
			return trading.Principal{}, time.Time{}, &trading.Error{Code: trading.EUNAUTHORIZED, Message: "the access token has expired", Err: err}
		}
		return trading.Principal{}, time.Time{}, &trading.Error{Code: trading.EUNAUTHORIZED, Message: "the access token is not valid", Err: err}
	}
	invalid := func(why string) (trading.Principal, time.Time, error) {
		return trading.Principal{}, time.Time{}, &trading.Error{Code: trading.EUNAUTHORIZED, Message: "the access token is not valid", Err: errors.New(why)}
	}
	if claims.Use != "" && claims.Use != accessUse {
		return invalid("not an access token")
	}
	if claims.IssuedAt != nil && claims.IssuedAt.After(a.now().Add(iatSkew)) {
		return invalid("issued in the future")
	}
	id, err := uuid.Parse(claims.Subject)
	if err != nil {
		return invalid("sub is not a user id")
	}
	p := trading.Principal{UserID: id, Username: claims.Name}
	if claims.SessionID != "" {
		if p.SessionID, err = uuid.Parse(claims.SessionID); err != nil {
			return invalid("sid is not a session id")
		}
	}
	for _, s := range claims.Roles {
		r, err := trading.ParseRole(s)
		if err != nil {
			return invalid("unknown role")
		}
		p.Roles = append(p.Roles, r)
	}
	return p, claims.ExpiresAt.Time, nil
}

// keyFor picks the verification key by kid; a token without a kid or with one we do not
// know is refused rather than tried against every key.
func (a *Authority) keyFor(t *gojwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	key, ok := a.keys.byID[kid]
	if !ok {
		return nil, errors.New("unknown kid")
	}
	return key, nil
}

// RefreshTokenBytes is the entropy of a refresh token.
const RefreshTokenBytes = 32

// NewRefreshToken returns a fresh opaque refresh token for the client and the hash that
// the database stores in its place.
func NewRefreshToken() (token string, hash []byte, err error) {
	b := make([]byte, RefreshTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("refresh token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, HashRefreshToken(token), nil
}

// HashRefreshToken is the SHA-256 of a refresh token as the client presents it. A fast
// hash is enough: the token has 256 bits of entropy, so there is nothing to brute-force.
func HashRefreshToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}
