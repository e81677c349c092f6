package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// patternKey carries a *string through the request context: CapturePattern, right around
// the ServeMux, writes the matched pattern into it so that the outer Middleware sees it even
// when a middleware in between replaced the *http.Request (r.WithContext copies, and the
// mux sets Pattern on the copy it was given).
type patternKey struct{}

// Middleware counts api_requests_total and observes api_request_duration_seconds. Put it
// outermost, so that it also sees requests that inner middleware answers (429, 413, 401).
// endpoint is the ServeMux pattern without the method ("/api/orders/{id}/approve"), or
// "unmatched" when no route matched: never the raw path. (runtime/http hands CaptureRoute
// the route of a 405 too, so a wrong method on a real path counts under its pattern.)
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var pattern string
		r = r.WithContext(context.WithValue(r.Context(), patternKey{}, &pattern))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if pattern == "" {
				pattern = r.Pattern // the mux was right below us
			}
			endpoint := routeOf(pattern)
			method := r.Method
			if !knownMethod(method) {
				method = "other"
			}
			m.requests.WithLabelValues(method, endpoint, strconv.Itoa(sw.status)).Inc()
			m.requestDuration.WithLabelValues(method, endpoint).Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(sw, r)
	})
}

// CapturePattern wraps the ServeMux (innermost, directly around it) and hands the matched
// route pattern to Middleware.
func CapturePattern(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r)
		if p, ok := r.Context().Value(patternKey{}).(*string); ok && r.Pattern != "" {
			*p = r.Pattern
		}
	})
}

// routeOf strips the method of a pattern ("GET /api/positions" -> "/api/positions").
func routeOf(pattern string) string {
	if pattern == "" {
		return "unmatched"
	}
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ' ' {
			return pattern[i+1:]
		}
		if pattern[i] == '/' {
			break
		}
	}
	return pattern
}

func knownMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}

// statusWriter remembers the status code. It forwards Flush and Unwrap so that
// http.ResponseController keeps working through it.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// CaptureRoute is CapturePattern for routers that know each route's pattern when they
// register it (runtime/http's Config.Observe): it hands pattern to Middleware before the
// route runs.
func CaptureRoute(pattern string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := r.Context().Value(patternKey{}).(*string); ok {
			*p = pattern
		}
		next.ServeHTTP(w, r)
	})
}
