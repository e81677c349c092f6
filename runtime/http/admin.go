package http

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
)

// ReadyTimeout bounds one readiness check, so that a hung database turns /readyz 503
// before the kubelet's probe gives up.
const ReadyTimeout = 2 * time.Second

// AdminMux is the admin port's handler (:9090): a ServeMux, so that /metrics can be added
// beside /healthz and /readyz, whose every response (metrics, 404s and 405s included)
// carries the API's security headers and request id, and whose unknown paths and methods
// are answered in problem+json like the API's.
type AdminMux struct{ *http.ServeMux }

func (m AdminMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setCommonHeaders(w.Header(), requestID(r))
	serveProblems(m.ServeMux, &statusWriter{ResponseWriter: w}, r, nil)
}

// NewAdminHandler returns the admin port's handler with /healthz and /readyz.
//
// /healthz is 200 while the process serves. /readyz is 200 when ready returns nil and 503
// otherwise, a problem (like every error) whose detail says what is down (ready's error,
// which should name the dependency, e.g. trading.Unavailable("database", err)).
func NewAdminHandler(ready func(context.Context) error) AdminMux {
	mux := newAdminMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			writeNotReady(w, readyMessage(err), nil)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	return mux
}

// notReady is /readyz's 503: a problem+json (the contract's form of every error) that also
// carries every check's state, as the 200 does.
type notReady struct {
	Problem
	Checks map[string]string `json:"checks,omitempty"`
}

func writeNotReady(w http.ResponseWriter, detail string, checks map[string]string) {
	status := http.StatusServiceUnavailable
	writeJSONAs(w, status, "application/problem+json", notReady{
		Problem: Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: "not ready: " + detail},
		Checks:  checks,
	})
}

// ReadyCheck is one dependency that /readyz looks at.
type ReadyCheck struct {
	Name  string // "database", "redis"
	Check func(context.Context) error
	// Optional dependencies degrade the service when down (Redis: reads from the database,
	// rate limits per replica) but leave it ready; /readyz says so in its body.
	Optional bool
}

// Readiness is the body of /readyz from NewAdminHandlerWithChecks.
type Readiness struct {
	// Status is "ready" or "degraded" (an optional dependency is down); unavailable is the
	// 503's problem.
	Status string `json:"status"`
	// Checks maps each dependency to "ok" or what is wrong with it.
	Checks map[string]string `json:"checks"`
}

// NewAdminHandlerWithChecks is NewAdminHandler with named checks, run concurrently: 503
// when a required one fails, 200 otherwise, and every check's state in the body (in the
// 503's problem too, under "checks").
func NewAdminHandlerWithChecks(checks ...ReadyCheck) AdminMux {
	mux := newAdminMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		errs := make([]error, len(checks))
		var wg sync.WaitGroup
		for i, c := range checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = c.Check(ctx)
			}()
		}
		wg.Wait()

		body := Readiness{Status: "ready", Checks: map[string]string{}}
		var down []string
		for i, c := range checks {
			if errs[i] == nil {
				body.Checks[c.Name] = "ok"
				continue
			}
			body.Checks[c.Name] = readyMessage(errs[i])
			if c.Optional {
				if body.Status == "ready" {
					body.Status = "degraded"
				}
			} else {
				down = append(down, c.Name+": "+body.Checks[c.Name])
			}
		}
		if len(down) > 0 {
			writeNotReady(w, strings.Join(down, "; "), body.Checks)
			return
		}
		writeJSON(w, http.StatusOK, body)
	})
	return mux
}

func newAdminMux() AdminMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return AdminMux{mux}
}

// readyMessage says what is down without the details a driver error may carry (hosts,
// user names, database names): a coded error's message, else a generic one (the check
// logs or counts the cause itself).
func readyMessage(err error) string {
	var te *trading.Error
	switch {
	case errors.As(err, &te) && te.Code != trading.EINTERNAL:
		return te.Message
	case errors.Is(err, context.DeadlineExceeded):
		return "check timed out"
	default:
		return "check failed"
	}
}
