package http

import (
	"net/http"

	"github.com/google/uuid"
)

// securityHeaders go on every response. The API serves JSON only, so the strictest CSP
// costs nothing; no-store keeps tokens and balances out of shared caches.
var securityHeaders = [][2]string{
	{"Strict-Transport-Security", "max-age=31536000; includeSubDomains"},
	{"Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"},
	{"X-Frame-Options", "DENY"},
	{"X-Content-Type-Options", "nosniff"},
	{"Referrer-Policy", "no-referrer"},
	{"Cache-Control", "no-store"},
}

// HeaderRequestID carries the request id both ways.
const HeaderRequestID = "X-Request-ID"

// securityValues holds securityHeaders as header values, built once: every response shares
// them instead of allocating six slices (capacity 1, so a later Add copies, never writes here).
var securityValues = func() map[string][]string {
	m := make(map[string][]string, len(securityHeaders))
	for _, kv := range securityHeaders {
		m[http.CanonicalHeaderKey(kv[0])] = []string{kv[1]}[:1:1]
	}
	return m
}()

func setCommonHeaders(h http.Header, requestID string) {
	for k, v := range securityValues {
		h[k] = v
	}
	h.Set(HeaderRequestID, requestID)
}

// requestID echoes the client's X-Request-ID when it is sane (1..128 characters of
// A-Za-z0-9._:-, so that it cannot forge log lines or headers) and makes one otherwise.
func requestID(r *http.Request) string {
	if id := r.Header.Get(HeaderRequestID); saneRequestID(id) {
		return id
	}
	return uuid.NewString()
}

func saneRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}
