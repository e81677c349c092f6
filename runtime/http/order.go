package http

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	trading "github.com/findmy/trading-operator/runtime"
)

// Listing limits (api.md: limit 1..500, default 50).
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

func (s *Server) handleCreateOrder(w http.ResponseWriter, r *http.Request) {
	var req trading.OrderRequest
	var typeFields []trading.FieldError
	if err := s.decode(w, r, &req); err != nil {
		// A field of the wrong JSON type is listed together with the other failing fields.
		if trading.ErrorCode(err) != trading.EINVALID {
			s.decodeFailed(w, r, err)
			return
		}
		typeFields = trading.ErrorFields(err)
	}
	o, err := s.cfg.Rules.Validate(req)
	if err != nil || typeFields != nil {
		s.Error(w, r, mergeFields(err, typeFields))
		return
	}
	order, created, err := s.svc.Orders.CreateOrder(r.Context(), o)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	status := http.StatusOK // an idempotent replay: the first order, unchanged
	if created {
		status = http.StatusCreated
		w.Header().Set("Location", "/api/orders/"+order.ID.String())
	}
	writeJSON(w, status, order)
}

// OrderList is the answer of GET /api/orders; NextCursor is null on the last page.
type OrderList struct {
	Orders     []*trading.Order `json:"orders"`
	NextCursor *string          `json:"next_cursor"`
}

func (s *Server) handleListOrders(w http.ResponseWriter, r *http.Request) {
	q, fields := queryParams(r, "status", "symbol", "limit", "cursor")
	f := trading.OrderFilter{Cursor: q.Get("cursor")}
	if v := q.Get("status"); v != "" {
		st, err := trading.ParseOrderStatus(v)
		fields = append(fields, trading.ErrorFields(err)...)
		f.Status = &st
	}
	if v := q.Get("symbol"); v != "" {
		f.Symbol = &v
	}
	f.Limit, fields = parseLimit(q, fields)
	if fields != nil {
		s.Error(w, r, trading.Invalid(fields...))
		return
	}
	orders, next, err := s.svc.Orders.FindOrders(r.Context(), f)
	if err != nil {
		s.Error(w, r, cursorError(err, f.Cursor))
		return
	}
	writeJSON(w, http.StatusOK, OrderList{Orders: nonNil(orders), NextCursor: optional(next)})
}

// queryParams reads the query string. r.URL.Query() drops a pair it cannot decode (a bad
// %-escape, a semicolon) without a word, so `?limit=5%` listed 50 and `?cursor=%zz` the first
// page; here such a pair, or one that decodes to no text, is an invalid field (422) named by
// its key, as a bad value is. A parameter of known (the listing's own) given more than once
// is invalid too: Get would take the first value and drop the others without a word
// (`?status=pending&status=approved` listed the pending ones); it is removed from the
// values, so that no check of its value names it a second time. Parameters the listing
// does not know are ignored, repeated or not.
func queryParams(r *http.Request, known ...string) (url.Values, []trading.FieldError) {
	q := url.Values{}
	var fields []trading.FieldError
	for pair := range strings.SplitSeq(r.URL.RawQuery, "&") {
		if pair == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(pair, "=")
		key, keyErr := url.QueryUnescape(rawKey)
		value, valueErr := url.QueryUnescape(rawValue)
		if keyErr != nil || valueErr != nil || strings.Contains(pair, ";") {
			if keyErr != nil {
				key = rawKey
			}
			fields = append(fields, trading.FieldError{Field: key, Message: "is not valid in a query string (a bad %-escape or a bare ';')"})
			continue
		}
		// A %-escape can spell bytes that are no text (%ff, %00): named here, instead of
		// reaching the database as a filter and coming back as a 422 that names no field.
		if !utf8.ValidString(key) || !utf8.ValidString(value) || strings.ContainsRune(key+value, 0) {
			fields = append(fields, trading.FieldError{Field: strings.ToValidUTF8(strings.ReplaceAll(key, "\x00", ""), "\uFFFD"),
				Message: "is not valid text (bytes that are not UTF-8, or a NUL)"})
			continue
		}
		q.Add(key, value)
	}
	for _, key := range known {
		if len(q[key]) > 1 {
			fields = append(fields, trading.FieldError{Field: key, Message: "must be given at most once"})
			delete(q, key)
		}
	}
	return q, fields
}

// parseLimit reads the limit query parameter, DefaultLimit when absent.
func parseLimit(q url.Values, fields []trading.FieldError) (int, []trading.FieldError) {
	v := q.Get("limit")
	if v == "" {
		return DefaultLimit, fields
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, append(fields, trading.FieldError{Field: "limit", Message: "must be an integer from 1 to 500"})
	}
	return n, fields
}

// cursorError names the cursor field when a service refuses a listing as invalid without
// saying which field: the cursor is the only parameter it still checks.
func cursorError(err error, cursor string) error {
	if trading.ErrorCode(err) == trading.EINVALID && len(trading.ErrorFields(err)) == 0 && cursor != "" {
		return trading.Invalid(trading.FieldError{Field: "cursor", Message: "is not a cursor of this listing"})
	}
	return err
}

// PendingList is the answer of GET /api/orders/pending.
type PendingList struct {
	Orders []*trading.Order `json:"orders"`
}

func (s *Server) handlePendingOrders(w http.ResponseWriter, r *http.Request) {
	orders, err := s.svc.Orders.FindPendingOrders(r.Context())
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, PendingList{Orders: nonNil(orders)})
}

// errNoOrder answers an id that is not a UUID like one that does not exist.
var errNoOrder = trading.Errorf(trading.ENOTFOUND, "order not found")

// orderID reads the {id} of an order's path: a UUID as the API writes it, 8-4-4-4-12
// hexadecimal digits, in either case (RFC 9562 reads hex digits case-insensitively).
// uuid.Parse also takes {braces}, a urn:uuid: prefix and the 32 digits without hyphens:
// each of those answered as the order, so one order had five addresses; an order has the
// one, and the others are no order (404).
func orderID(r *http.Request) (uuid.UUID, error) {
	s := r.PathValue("id")
	if len(s) != 36 {
		return uuid.Nil, errNoOrder
	}
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, errNoOrder
	}
	return id, nil
}

func (s *Server) handleGetOrder(w http.ResponseWriter, r *http.Request) {
	id, err := orderID(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	order, err := s.svc.Orders.FindOrderByID(r.Context(), id)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, order)
}

// invalidateTimeout bounds the cache invalidation after an approve.
const invalidateTimeout = 2 * time.Second

// ApprovedOrder is the answer of an approve: the order's fields and the trade it produced.
type ApprovedOrder struct {
	*trading.Order
	Trade *trading.Trade `json:"trade"`
}

func (s *Server) handleApprove(w http.ResponseWriter, r *http.Request) {
	id, err := orderID(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	// The role first, whatever the body is, as for reject.
	if p, _ := trading.PrincipalFromContext(r.Context()); !p.CanDecide() {
		s.Error(w, r, trading.ErrMayNotDecide())
		return
	}
	if err := s.decodeNoBody(w, r); err != nil {
		s.decodeFailed(w, r, err)
		return
	}
	order, trade, err := s.svc.Orders.ApproveOrder(r.Context(), id)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	// Read-your-writes: the requester's cached positions and summary must be gone before
	// anyone learns that the approve happened. The trade is committed whatever happens
	// here, so a failure is logged rather than reported as a failed approve, and a client
	// that hung up does not cancel the invalidation. (runtime/postgres's order service can
	// do this itself: give the Invalidator to one of the two, not both.)
	if s.svc.Invalidator != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), invalidateTimeout)
		err := s.svc.Invalidator.InvalidateTrade(ctx, order.RequestedBy, order.Symbol)
		cancel()
		if err != nil {
			s.log.WarnContext(r.Context(), "cache invalidation after approve failed", "error", err,
				"request_id", RequestID(r.Context()), "user_id", order.RequestedBy)
		}
	}
	writeJSON(w, http.StatusOK, ApprovedOrder{Order: order, Trade: trade})
}

type rejectRequest struct {
	Reason *string `json:"reason"`
}

func (s *Server) handleReject(w http.ResponseWriter, r *http.Request) {
	id, err := orderID(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	// A caller who may not decide is told so whatever the body is (malformed, another type):
	// the role comes first, as for approve. The service checks it again, then the reason
	// (trading.ValidateReason).
	if p, _ := trading.PrincipalFromContext(r.Context()); !p.CanDecide() {
		s.Error(w, r, trading.ErrMayNotDecide())
		return
	}
	var req rejectRequest
	if err := s.decode(w, r, &req); err != nil {
		s.decodeFailed(w, r, err)
		return
	}
	var reason string
	if req.Reason != nil {
		reason = *req.Reason
	}
	order, err := s.svc.Orders.RejectOrder(r.Context(), id, reason)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, order)
}

// nonNil makes an empty listing marshal as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
