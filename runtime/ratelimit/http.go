package ratelimit

import (
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
)

// Route wraps the handler of one route whose rate-limit class is class ("login", "trading",
// "data" or "" for none) and whose ServeMux pattern is pattern. It is meant for
// runtime/http's Config.Guard, which runs inside authentication.
func (l *Limiter) Route(class, pattern string, next http.Handler) http.Handler {
	if class == "" {
		return next
	}
	c := Class(class)
	_, path, _ := strings.Cut(pattern, " ")
	if path == "" {
		path = pattern
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.allow(w, r, c, path) {
			next.ServeHTTP(w, r)
		}
	})
}

// Middleware classifies every request by method and path (see the package comment) and
// limits it. Put it where the principal is already in the request context.
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := Classify(r.Method, r.URL.Path)
		if !ok || l.allow(w, r, c, r.URL.Path) {
			next.ServeHTTP(w, r)
		}
	})
}

// Classify returns the class of a request to the API, false when it is not limited.
func Classify(method, path string) (Class, bool) {
	switch {
	case !strings.HasPrefix(path, "/api/"):
		return "", false
	case method == http.MethodPost && (path == "/api/auth/login" || path == "/api/auth/refresh" || path == "/api/auth/logout"):
		return Login, true
	case method == http.MethodPost && (path == "/api/orders" ||
		strings.HasPrefix(path, "/api/orders/") && (strings.HasSuffix(path, "/approve") || strings.HasSuffix(path, "/reject"))):
		return Trading, true
	case method == http.MethodGet || method == http.MethodHead:
		return Data, true
	}
	return "", false
}

var (
	hdrLimit     = http.CanonicalHeaderKey("RateLimit-Limit")
	hdrRemaining = http.CanonicalHeaderKey("RateLimit-Remaining")
	hdrReset     = http.CanonicalHeaderKey("RateLimit-Reset")
)

// allow checks the buckets of one request, sets the RateLimit headers and answers 429
// itself when refused.
func (l *Limiter) allow(w http.ResponseWriter, r *http.Request, c Class, path string) bool {
	var reqs []Request
	p, authenticated := trading.PrincipalFromContext(r.Context())
	switch {
	case c == Login:
		// Per client IP, one bucket per auth endpoint.
		ip := l.clientKey(r)
		if path != "/api/auth/login" {
			reqs = []Request{{Login, path + ":" + ip}}
		} else {
			// api.md: the global limits are "over all of them", login included, and before
			// login a client is its IP. Refresh and logout stay out: they renew the session
			// of a user already counted, and a day's refreshes of an office behind one
			// address would otherwise use up the day's budget of its logins.
			g := "ip:" + ip
			reqs = []Request{{Login, ip}, {GlobalMinute, g}, {GlobalDay, g}}
		}
	case !authenticated:
		// Authentication refused it (runtime/http's Guard also wraps the 401): before login
		// a client is its IP (api.md), so a client hammering with garbage or expired tokens
		// is limited in the route's class like one hammering logins. Not in the global
		// buckets of its IP, which hold its logins: the 401 a client gets when its access
		// token has expired, once an hour for every user of an office behind one address,
		// would otherwise use up the day's budget of that office's logins. (The "ip:" keys
		// never meet a user's: those are UUIDs.)
		reqs = []Request{{c, "ip:" + l.clientKey(r)}}
	default:
		u := p.UserID.String()
		reqs = []Request{{c, u}, {GlobalMinute, u}, {GlobalDay, u}}
	}
	d := l.CheckAll(r.Context(), reqs...)
	if d.Limit == 0 {
		return true // every bucket of the request is off
	}
	// Canonical keys assigned directly: Set would build the canonical form of
	// "RateLimit-..." ("Ratelimit-...") anew on every request.
	h := w.Header()
	h[hdrLimit] = []string{strconv.Itoa(d.Limit)}
	h[hdrRemaining] = []string{strconv.Itoa(d.Remaining)}
	h[hdrReset] = []string{strconv.Itoa(ceilSeconds(d.Reset))}
	if d.Allowed {
		return true
	}
	retry := max(1, ceilSeconds(d.RetryAfter))
	h.Set("Retry-After", strconv.Itoa(retry))
	h.Set("Content-Type", "application/problem+json")
	w.WriteHeader(http.StatusTooManyRequests)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":   "about:blank",
		"title":  http.StatusText(http.StatusTooManyRequests),
		"status": http.StatusTooManyRequests,
		"detail": "rate limit of class " + string(d.Class) + " exceeded; retry after " + strconv.Itoa(retry) + " seconds",
	})
	return false
}

// clientKey names the client of r in its per-IP buckets: its address, or the /64 of an IPv6
// one (one host usually holds a whole /64 and could otherwise rotate addresses past a limit).
func (l *Limiter) clientKey(r *http.Request) string {
	addr := ClientIP(r, l.cfg.TrustedProxies)
	if addr.Is6() {
		if p, err := addr.Prefix(64); err == nil {
			return p.String()
		}
	}
	return addr.String()
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}

// ClientIP returns the client address of r: the TCP peer, unless the peer is a trusted
// proxy; then the right-most X-Forwarded-For entry that is not a trusted proxy (entries to
// its left were written by the client and prove nothing). A malformed entry stops the walk
// at the last trusted hop.
func ClientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if !peer.IsValid() || !isTrusted(peer, trusted) {
		return peer
	}
	hop := peer
	values := r.Header.Values("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		parts := strings.Split(values[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a := parseAddr(strings.TrimSpace(parts[j]))
			if !a.IsValid() {
				return hop
			}
			if !isTrusted(a, trusted) {
				return a
			}
			hop = a
		}
	}
	return hop
}

func parseAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
