package http

import (
	"context"
	"errors"
	"net/http"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
)

// ReadyTimeout bounds one readiness check, so that a hung database turns /readyz 503
// before the kubelet's probe gives up.
const ReadyTimeout = 2 * time.Second

// NewAdminHandler returns the admin port's mux (:9090) with /healthz and /readyz. It is a
// *ServeMux so that /metrics can be added beside them.
//
// /healthz is 200 while the process serves. /readyz is 200 when ready returns nil and 503
// otherwise, with a JSON body saying what is down (ready's error, which should name the
// dependency, e.g. trading.Unavailable("database", err)).
func NewAdminHandler(ready func(context.Context) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		setCommonHeaders(w.Header(), requestID(r))
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		setCommonHeaders(w.Header(), requestID(r))
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": readyMessage(err)})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	return mux
}

// readyMessage says what is down without the details a driver error may carry (hosts,
// user names): a coded error's message, else a generic one.
func readyMessage(err error) string {
	var te *trading.Error
	switch {
	case errors.As(err, &te) && te.Code != trading.EINTERNAL:
		return te.Message
	case errors.Is(err, context.DeadlineExceeded):
		return "readiness check timed out"
	default:
		return "not ready: " + err.Error()
	}
}
