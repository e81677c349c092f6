package trading

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

// Side of an order or trade.
type Side string

const (
	Buy  Side = "buy"
	Sell Side = "sell"
)

// OrderStatus is where an order is in the four-eyes workflow.
type OrderStatus string

const (
	StatusPending  OrderStatus = "pending"  // waiting for a risk decision
	StatusApproved OrderStatus = "approved" // approved and executed into a trade
	StatusRejected OrderStatus = "rejected"
)

// ParseOrderStatus returns the status named s, or the invalid field "status" (every layer
// that reads a status from a client answers in the same words).
func ParseOrderStatus(s string) (OrderStatus, error) {
	switch st := OrderStatus(s); st {
	case StatusPending, StatusApproved, StatusRejected:
		return st, nil
	}
	return "", Invalid(FieldError{Field: "status", Message: "must be one of pending, approved, rejected"})
}

// Order is a request to trade that a second person must approve before it executes.
type Order struct {
	ID             uuid.UUID   `json:"id"`
	ClientOrderID  *string     `json:"client_order_id"`
	Symbol         string      `json:"symbol"`
	Side           Side        `json:"side"`
	Quantity       Amount      `json:"quantity"`
	Price          Amount      `json:"price"`
	Status         OrderStatus `json:"status"`
	RequestedBy    uuid.UUID   `json:"requested_by"`
	DecidedBy      *uuid.UUID  `json:"decided_by"`
	DecisionReason *string     `json:"decision_reason"`
	CreatedAt      time.Time   `json:"created_at"`
	UpdatedAt      time.Time   `json:"updated_at"`
	DecidedAt      *time.Time  `json:"decided_at"`
}

// NewOrder is a validated order request.
type NewOrder struct {
	Symbol        string
	Side          Side
	Quantity      decimal.Decimal
	Price         decimal.Decimal
	ClientOrderID string // "" when the client sent none
}

// OrderRequest is the body of POST /api/orders as the client sent it.
type OrderRequest struct {
	Symbol        *string `json:"symbol"`
	Side          *string `json:"side"`
	Quantity      Amount  `json:"quantity"`
	Price         Amount  `json:"price"`
	ClientOrderID *string `json:"client_order_id"`
}

// OrderRules are the limits that validation applies (configured at start).
type OrderRules struct {
	Symbols     []string
	MaxQuantity decimal.Decimal
	MaxPrice    decimal.Decimal
}

var (
	symbolPattern        = regexp.MustCompile(`^[A-Z]{2,10}/[A-Z]{2,10}$`)
	clientOrderIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
)

// Validate checks an order request against the rules and returns the order or an
// EINVALID error listing every failing field (not only the first).
func (r OrderRules) Validate(req OrderRequest) (NewOrder, error) {
	var fields []FieldError
	bad := func(field, msg string) { fields = append(fields, FieldError{Field: field, Message: msg}) }

	var o NewOrder
	switch {
	case req.Symbol == nil || *req.Symbol == "":
		bad("symbol", "is required")
	case !symbolPattern.MatchString(*req.Symbol):
		bad("symbol", "must look like BTC/USD")
	case !slices.Contains(r.Symbols, *req.Symbol):
		bad("symbol", "is not a traded symbol")
	default:
		o.Symbol = *req.Symbol
	}

	switch {
	case req.Side == nil || *req.Side == "":
		bad("side", "is required")
	case *req.Side != string(Buy) && *req.Side != string(Sell):
		bad("side", "must be buy or sell")
	default:
		o.Side = Side(*req.Side)
	}

	o.Quantity = r.checkAmount("quantity", req.Quantity, r.MaxQuantity, bad)
	o.Price = r.checkAmount("price", req.Price, r.MaxPrice, bad)

	// "" is no key, like null or leaving it out: a client whose order type always carries the
	// field (a struct without omitempty) sends "" on every order, and the contract says "at
	// most 64 characters", which "" is.
	if req.ClientOrderID != nil && *req.ClientOrderID != "" {
		if !clientOrderIDPattern.MatchString(*req.ClientOrderID) {
			bad("client_order_id", "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
		} else {
			o.ClientOrderID = *req.ClientOrderID
		}
	}
	if len(fields) > 0 {
		return NewOrder{}, Invalid(fields...)
	}
	return o, nil
}

func (r OrderRules) checkAmount(field string, a Amount, max decimal.Decimal, bad func(string, string)) decimal.Decimal {
	switch {
	case !a.Set:
		bad(field, "is required")
	case a.Err != nil:
		bad(field, ErrorMessage(a.Err))
	case !a.Decimal.IsPositive():
		bad(field, "must be greater than 0")
	case a.Decimal.GreaterThan(max):
		bad(field, "must be at most "+max.String())
	default:
		return a.Decimal
	}
	return decimal.Decimal{}
}

// OrderFilter selects orders for a listing. Cursor is opaque to clients; implementations
// encode the (created_at, id) of the last row returned for keyset pagination.
type OrderFilter struct {
	Status *OrderStatus
	Symbol *string
	Limit  int
	Cursor string
}

// OrderService is the four-eyes workflow. Every method takes the caller from ctx
// (PrincipalFromContext) and enforces visibility and roles itself: an order the caller
// may not see is ENOTFOUND, never EFORBIDDEN, so that ids cannot be probed.
type OrderService interface {
	// CreateOrder stores a pending order for the caller. With a client order id already used
	// by the caller it returns the first order and created=false (same body), or ECONFLICT
	// (different body). EINVALID when the caller's daily loss limit is reached.
	CreateOrder(ctx context.Context, o NewOrder) (order *Order, created bool, err error)
	// FindOrderByID returns an order visible to the caller.
	FindOrderByID(ctx context.Context, id uuid.UUID) (*Order, error)
	// FindOrders lists visible orders newest first and the cursor of the next page ("" at the end).
	FindOrders(ctx context.Context, f OrderFilter) ([]*Order, string, error)
	// FindPendingOrders lists the pending orders visible to the caller, oldest first.
	FindPendingOrders(ctx context.Context) ([]*Order, error)
	// ApproveOrder executes a pending order into a trade and updates the requester's position,
	// all in one transaction. EFORBIDDEN for a non-risk caller or the requester (four eyes),
	// ECONFLICT when the order is no longer pending. Exactly one concurrent approval wins.
	ApproveOrder(ctx context.Context, id uuid.UUID) (*Order, *Trade, error)
	// RejectOrder marks a pending order rejected with the reason (ValidateReason), with the
	// same rules as ApproveOrder; the caller's role is checked before the reason.
	RejectOrder(ctx context.Context, id uuid.UUID, reason string) (*Order, error)
}

// MaxReasonLength bounds a rejection reason, in characters (not bytes: a reason in Greek is
// as long as one in English).
const MaxReasonLength = 500

// ValidateReason checks a rejection reason: required, at most MaxReasonLength characters.
func ValidateReason(reason string) error {
	switch {
	case !hasVisible(reason):
		return Invalid(FieldError{Field: "reason", Message: "is required"})
	case utf8.RuneCountInString(reason) > MaxReasonLength:
		return Invalid(FieldError{Field: "reason", Message: fmt.Sprintf("must be at most %d characters", MaxReasonLength)})
	case strings.ContainsRune(reason, 0):
		// PostgreSQL text cannot hold NUL: refused here, not as the store's 500.
		return Invalid(FieldError{Field: "reason", Message: "must not contain NUL characters"})
	case strings.IndexFunc(strings.ReplaceAll(reason, "\r\n", "\n"), hiddenControl) >= 0:
		return Invalid(FieldError{Field: "reason", Message: "must not contain control characters other than line breaks and tabs, or bidirectional overrides"})
	}
	return nil
}

// hiddenControl is a character that changes how a reason is shown rather than showing
// something: C0/C1 controls other than a line break (LF; a CRLF is read as one) or a tab (a
// terminal's escape sequences, a lone carriage return that overwrites the line) and the
// bidirectional embeddings, overrides and isolates that make text read reversed on a desk's
// screen (Unicode's Trojan Source characters). The direction marks (LRM, RLM, ALM) are
// allowed: right-to-left writers type them, and they reorder nothing.
func hiddenControl(r rune) bool {
	switch {
	case r == '\n' || r == '\t':
		return false
	case unicode.IsControl(r):
		return true
	case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// hasVisible reports whether s has a character that shows: not white space, not an invisible
// format character (a zero-width space, a byte-order mark, a direction mark), not a filler
// that renders blank (Hangul fillers, the blank braille pattern) and not a combining mark on
// its own.
func hasVisible(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool {
		switch r {
		case 0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800:
			return false
		}
		return !unicode.IsSpace(r) && !unicode.Is(unicode.Cf, r) && !unicode.Is(unicode.Mn, r)
	}) >= 0
}
