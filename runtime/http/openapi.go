package http

import (
	_ "embed"
	"net/http"
)

// openAPI is the hand-written OpenAPI 3.1 document of this API; a test checks that it
// lists exactly the routes the mux serves.
//
//go:embed openapi.json
var openAPI []byte

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}
