package jwt

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

var (
	secretA = bytes.Repeat([]byte("a"), 32)
	secretB = bytes.Repeat([]byte("b"), 48)
)

func keysFor(t *testing.T, s string) *KeySet {
	t.Helper()
	ks, err := ParseKeys(s)
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	return ks
}

func TestParseKeys(t *testing.T) {
	a := base64.StdEncoding.EncodeToString(secretA)
	b := base64.RawURLEncoding.EncodeToString(secretB)
	short := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("s"), 31))

	ks := keysFor(t, " k1:"+a+" ,\nk2:"+b+"\n")
	if ks.Len() != 2 || ks.SigningKeyID() != "k1" {
		t.Fatalf("got %d keys, signing %q; want 2, k1", ks.Len(), ks.SigningKeyID())
	}
	if !bytes.Equal(ks.byID["k2"], secretB) {
		t.Fatal("URL-encoded secret decoded wrongly")
	}

	for name, in := range map[string]string{
		"empty":         "",
		"only commas":   " , ,\n",
		"no colon":      "k1" + a,
		"no secret":     "k1:",
		"no kid":        ":" + a,
		"bad kid":       "k 1:" + a,
		"not base64":    "k1:!!!not-base64!!!",
		"short secret":  "k1:" + short,
		"duplicate kid": "k1:" + a + ",k1:" + b,
		// Id and secret swapped: a URL-base64 secret is a well-formed id, and "k1" a
		// (too short) secret.
		"swapped": b + ":k1",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseKeys(in)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "JWT_KEYS") {
				t.Errorf("error %q does not name JWT_KEYS", err)
			}
			if strings.Contains(err.Error(), short) || strings.Contains(err.Error(), a) || strings.Contains(err.Error(), b) {
				t.Errorf("error %q shows a secret", err)
			}
		})
	}
}

func newAuthority(t *testing.T) *Authority {
	a64 := base64.StdEncoding.EncodeToString(secretA)
	b64 := base64.StdEncoding.EncodeToString(secretB)
	return NewAuthority(keysFor(t, "new:"+a64+",old:"+b64), "tradingd", "trading-api", time.Hour)
}

var alice = trading.Principal{UserID: uuid.New(), Username: "alice", Roles: []trading.Role{trading.RoleTrader, trading.RoleRisk}}

func TestIssueVerify(t *testing.T) {
	a := newAuthority(t)
	tok, ttl, err := a.Issue(alice)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != time.Hour {
		t.Errorf("ttl %v", ttl)
	}
	p, err := a.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if p.UserID != alice.UserID || p.Username != "alice" || len(p.Roles) != 2 || !p.Has(trading.RoleRisk) {
		t.Fatalf("principal %+v", p)
	}

	// The header and the claims are what the contract lists.
	var c Claims
	parsed, _, err := gojwt.NewParser().ParseUnverified(tok, &c)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Header["alg"] != "HS256" || parsed.Header["kid"] != "new" {
		t.Errorf("header %v", parsed.Header)
	}
	if c.Subject != alice.UserID.String() || c.Issuer != "tradingd" || len(c.Audience) != 1 || c.Audience[0] != "trading-api" ||
		c.IssuedAt == nil || c.ExpiresAt == nil || c.ExpiresAt.Sub(c.IssuedAt.Time) != time.Hour || c.Use != "access" {
		t.Errorf("claims %+v", c)
	}
}

// sign makes a token with arbitrary header and claims, as an attacker would.
func sign(t *testing.T, method gojwt.SigningMethod, kid string, key any, mutate func(*Claims)) string {
	t.Helper()
	now := time.Now()
	c := Claims{
		Name: "mallory", Roles: []string{"admin"}, Use: "access",
		RegisteredClaims: gojwt.RegisteredClaims{
			Subject: uuid.NewString(), Issuer: "tradingd", Audience: gojwt.ClaimStrings{"trading-api"},
			IssuedAt: gojwt.NewNumericDate(now), ExpiresAt: gojwt.NewNumericDate(now.Add(time.Hour)),
		},
	}
	if mutate != nil {
		mutate(&c)
	}
	tok := gojwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifyRejects(t *testing.T) {
	a := newAuthority(t)
	hs := gojwt.SigningMethodHS256
	other := bytes.Repeat([]byte("x"), 32)

	// A control: the same recipe with the right key passes, so each case below fails
	// for the one reason it names.
	if _, err := a.Verify(sign(t, hs, "new", secretA, nil)); err != nil {
		t.Fatalf("control token refused: %v", err)
	}
	if _, err := a.Verify(sign(t, hs, "old", secretB, nil)); err != nil {
		t.Fatalf("token of the second (verify-only) key refused: %v", err)
	}
	// Exactly the contract's claims (sub, name, roles, iss, aud, iat, exp): no token_use.
	if _, err := a.Verify(sign(t, hs, "old", secretB, func(c *Claims) { c.Use = "" })); err != nil {
		t.Fatalf("token with only the contract's claims refused: %v", err)
	}
	// A verifier whose clock is a second or two behind the issuer's.
	if _, err := a.Verify(sign(t, hs, "new", secretA, func(c *Claims) { c.IssuedAt = gojwt.NewNumericDate(time.Now().Add(2 * time.Second)) })); err != nil {
		t.Fatalf("token issued 2s ahead of this clock refused: %v", err)
	}

	valid := sign(t, hs, "new", secretA, nil)
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"`+uuid.NewString()+`","roles":["admin"],"token_use":"access","iss":"tradingd","aud":"trading-api","exp":9999999999,"iat":1}`)) + "." + parts[2]

	cases := map[string]string{
		"alg none":             sign(t, gojwt.SigningMethodNone, "new", gojwt.UnsafeAllowNoneSignatureType, nil),
		"other key":            sign(t, hs, "new", other, nil),
		"unknown kid":          sign(t, hs, "nope", secretA, nil),
		"no kid":               sign(t, hs, "", secretA, nil),
		"kid of the other key": sign(t, hs, "old", secretA, nil),
		"HS384":                sign(t, gojwt.SigningMethodHS384, "new", secretA, nil),
		"expired": sign(t, hs, "new", secretA, func(c *Claims) {
			c.IssuedAt = gojwt.NewNumericDate(time.Now().Add(-2 * time.Hour))
			c.ExpiresAt = gojwt.NewNumericDate(time.Now().Add(-time.Hour))
		}),
		"no exp":                sign(t, hs, "new", secretA, func(c *Claims) { c.ExpiresAt = nil }),
		"issued in the future":  sign(t, hs, "new", secretA, func(c *Claims) { c.IssuedAt = gojwt.NewNumericDate(time.Now().Add(time.Hour)) }),
		"wrong audience":        sign(t, hs, "new", secretA, func(c *Claims) { c.Audience = gojwt.ClaimStrings{"other-api"} }),
		"no audience":           sign(t, hs, "new", secretA, func(c *Claims) { c.Audience = nil }),
		"wrong issuer":          sign(t, hs, "new", secretA, func(c *Claims) { c.Issuer = "evil" }),
		"refresh use":           sign(t, hs, "new", secretA, func(c *Claims) { c.Use = "refresh" }),
		"expired a second ago":  sign(t, hs, "new", secretA, func(c *Claims) { c.ExpiresAt = gojwt.NewNumericDate(time.Now().Add(-time.Second)) }),
		"issued a minute ahead": sign(t, hs, "new", secretA, func(c *Claims) { c.IssuedAt = gojwt.NewNumericDate(time.Now().Add(time.Minute)) }),
		"sub not a uuid":        sign(t, hs, "new", secretA, func(c *Claims) { c.Subject = "admin" }),
		"unknown role":          sign(t, hs, "new", secretA, func(c *Claims) { c.Roles = []string{"root"} }),
		"tampered":              tampered,
		"garbage":               "not.a.jwt",
		"empty":                 "",
	}
	refresh, _, err := NewRefreshToken()
	if err != nil {
		t.Fatal(err)
	}
	cases["refresh token"] = refresh

	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			p, err := a.Verify(tok)
			if err == nil {
				t.Fatalf("accepted, principal %+v", p)
			}
			if code := trading.ErrorCode(err); code != trading.EUNAUTHORIZED {
				t.Fatalf("code %q, want %q (%v)", code, trading.EUNAUTHORIZED, err)
			}
		})
	}
}

func TestVerifyExpiresWithClock(t *testing.T) {
	a := newAuthority(t)
	tok, _, err := a.Issue(alice)
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return time.Now().Add(time.Hour + time.Second) }
	if _, err := a.Verify(tok); trading.ErrorCode(err) != trading.EUNAUTHORIZED {
		t.Fatalf("an hour later: %v, want unauthorized", err)
	}
}

func TestRefreshToken(t *testing.T) {
	tok1, hash1, err := NewRefreshToken()
	if err != nil {
		t.Fatal(err)
	}
	tok2, _, _ := NewRefreshToken()
	if tok1 == tok2 {
		t.Fatal("two refresh tokens are equal")
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok1)
	if err != nil || len(raw) != RefreshTokenBytes {
		t.Fatalf("token %q: %d bytes, %v", tok1, len(raw), err)
	}
	if !bytes.Equal(hash1, HashRefreshToken(tok1)) || len(hash1) != 32 {
		t.Fatal("hash does not match")
	}
	if bytes.Contains(hash1, []byte(tok1)) {
		t.Fatal("hash contains the token")
	}
}

// A verdict remembered by the verified-token cache must not outlive the token: the same
// token, verified once while valid, is refused once the clock passes exp.
func TestVerifyCacheHonoursExpiry(t *testing.T) {
	a := newAuthority(t)
	tok, _, err := a.Issue(alice)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second call is answered from the cache
		p, err := a.Verify(tok)
		if err != nil || p.UserID != alice.UserID || p.Username != alice.Username || len(p.Roles) != len(alice.Roles) {
			t.Fatalf("fresh token: %+v, %v", p, err)
		}
	}
	a.now = func() time.Time { return time.Now().Add(time.Hour + time.Second) }
	if _, err := a.Verify(tok); trading.ErrorCode(err) != trading.EUNAUTHORIZED {
		t.Fatalf("an hour later, after a cached verdict: %v, want unauthorized", err)
	}
}

// A token that differs from a cached one in any byte (here its signature) is checked in
// full, not matched to the cached verdict.
func TestVerifyCacheDoesNotMatchTamperedToken(t *testing.T) {
	a := newAuthority(t)
	tok, _, err := a.Issue(alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(tok); err != nil {
		t.Fatal(err)
	}
	// Every other spelling of the last character: those that change the signature's bytes,
	// and those that only set the unused low bits of the base64 (the same bytes when decoded
	// leniently; a signature of 32 bytes leaves two such bits in its last character).
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for _, c := range alphabet {
		if byte(c) == tok[len(tok)-1] {
			continue
		}
		tampered := tok[:len(tok)-1] + string(c)
		if _, err := a.Verify(tampered); trading.ErrorCode(err) != trading.EUNAUTHORIZED {
			t.Fatalf("signature ending in %q instead of %q accepted after the genuine token was cached: %v", c, tok[len(tok)-1], err)
		}
	}
	// And a failure is never remembered as a success, nor the reverse.
	if _, err := a.Verify(tok); err != nil {
		t.Fatalf("genuine token after a tampered one: %v", err)
	}
}

// BenchmarkVerify compares a full verification (HMAC and JSON of every request) with the
// cached verdict a client's later requests get. Run: go test -bench Verify ./runtime/jwt
func BenchmarkVerify(b *testing.B) {
	ks, err := ParseKeys("k:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("s"), 32)))
	if err != nil {
		b.Fatal(err)
	}
	a := NewAuthority(ks, "iss", "aud", time.Hour)
	tok, _, err := a.Issue(alice)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := a.verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}
