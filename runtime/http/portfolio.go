package http

import (
	"net/http"

	trading "github.com/findmy/trading-operator/runtime"
)

// TradeList is the answer of GET /api/trades; NextCursor is null on the last page.
type TradeList struct {
	Trades     []*trading.Trade `json:"trades"`
	NextCursor *string          `json:"next_cursor"`
}

func (s *Server) handleTrades(w http.ResponseWriter, r *http.Request) {
	q, fields := queryParams(r, "symbol", "limit", "cursor")
	f := trading.TradeFilter{Cursor: q.Get("cursor")}
	if v := q.Get("symbol"); v != "" {
		f.Symbol = &v
	}
	if f.Limit, fields = parseLimit(q, fields); fields != nil {
		s.Error(w, r, trading.Invalid(fields...))
		return
	}
	trades, next, err := s.svc.Portfolio.FindTrades(r.Context(), f)
	if err != nil {
		s.Error(w, r, cursorError(err, f.Cursor))
		return
	}
	writeJSON(w, http.StatusOK, TradeList{Trades: nonNil(trades), NextCursor: optional(next)})
}

// PositionList is the answer of GET /api/positions.
type PositionList struct {
	Positions []trading.PositionView `json:"positions"`
}

func (s *Server) handlePositions(w http.ResponseWriter, r *http.Request) {
	if s.encoded != nil {
		b, err := s.encoded.PositionsJSON(r.Context(), principal(r).UserID)
		if err != nil {
			s.Error(w, r, err)
			return
		}
		// PositionList encoded around the cached array: `{"positions":` b `}`.
		writeEncoded(w, http.StatusOK, `{"positions":`, b, `}`)
		return
	}
	views, err := s.svc.Portfolio.Positions(r.Context(), principal(r).UserID)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, PositionList{Positions: nonNil(views)})
}

func (s *Server) handleSummary(w http.ResponseWriter, r *http.Request) {
	if s.encoded != nil {
		b, err := s.encoded.SummaryJSON(r.Context(), principal(r).UserID)
		if err != nil {
			s.Error(w, r, err)
			return
		}
		writeEncoded(w, http.StatusOK, "", b, "")
		return
	}
	sum, err := s.svc.Portfolio.Summary(r.Context(), principal(r).UserID)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}
