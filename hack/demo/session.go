package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// api is a small JSON client of tradingd.
type api struct {
	base string
	hc   *http.Client
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (a api) do(ctx context.Context, method, path, token string, body any) (reply, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return reply{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return reply{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: raw}, err
}

// want decodes a reply with the expected status into out, or says what came back instead.
func (r reply) want(status int, what string, out any) error {
	if r.status != status {
		return fmt.Errorf("%s: HTTP %d, want %d: %s", what, r.status, status, strings.TrimSpace(string(r.body)))
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

type order struct {
	ID       string `json:"id"`
	Symbol   string `json:"symbol"`
	Side     string `json:"side"`
	Quantity string `json:"quantity"`
	Price    string `json:"price"`
	Status   string `json:"status"`
	Trade    *struct {
		ID          string `json:"id"`
		Quantity    string `json:"quantity"`
		Price       string `json:"price"`
		RealizedPnL string `json:"realized_pnl"`
	} `json:"trade"`
}

// session plays the scripted trader session against a running tradingd.
func session(ctx context.Context, p printer, srv *server) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	a := api{base: srv.api, hc: &http.Client{Timeout: 30 * time.Second}}

	login := func(user, password string) (string, error) {
		var tok struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
		}
		r, err := a.do(ctx, http.MethodPost, "/api/auth/login", "", map[string]string{"username": user, "password": password})
		if err != nil {
			return "", err
		}
		if err := r.want(http.StatusOK, "login "+user, &tok); err != nil {
			return "", err
		}
		p.line("POST /api/auth/login %s -> %d, access token %s... (expires in %ds)", user, r.status, tok.AccessToken[:min(12, len(tok.AccessToken))], tok.ExpiresIn)
		return tok.AccessToken, nil
	}

	p.step("trader1 logs in")
	trader, err := login("trader1", "password123")
	if err != nil {
		return err
	}

	p.step("trader1 submits an order")
	var o order
	r, err := a.do(ctx, http.MethodPost, "/api/orders", trader, map[string]string{
		"symbol": "BTC/USD", "side": "buy", "quantity": "0.5", "price": "60000", "client_order_id": "demo-1",
	})
	if err != nil {
		return err
	}
	if err := r.want(http.StatusCreated, "submit order", &o); err != nil {
		return err
	}
	p.line("POST /api/orders {BTC/USD buy 0.5 @ 60000} -> %d, order %s status %s", r.status, o.ID, o.Status)

	p.step("risk1 approves it (four eyes: trader1 may not approve its own order)")
	r, err = a.do(ctx, http.MethodPost, "/api/orders/"+o.ID+"/approve", trader, nil)
	if err != nil {
		return err
	}
	p.line("POST /api/orders/%s/approve as trader1 -> %d", o.ID, r.status)
	risk, err := login("risk1", "password789")
	if err != nil {
		return err
	}
	var approved order
	r, err = a.do(ctx, http.MethodPost, "/api/orders/"+o.ID+"/approve", risk, nil)
	if err != nil {
		return err
	}
	if err := r.want(http.StatusOK, "approve", &approved); err != nil {
		return err
	}
	if approved.Trade == nil {
		return fmt.Errorf("approve: no trade in %s", r.body)
	}
	p.line("POST /api/orders/%s/approve as risk1 -> %d, status %s, trade %s: %s %s @ %s",
		o.ID, r.status, approved.Status, approved.Trade.ID, approved.Trade.Quantity, approved.Symbol, approved.Trade.Price)

	p.step("trader1's positions and summary show the trade")
	var pos struct {
		Positions []struct {
			Symbol        string `json:"symbol"`
			Quantity      string `json:"quantity"`
			AvgEntryPrice string `json:"avg_entry_price"`
			MarkPrice     string `json:"mark_price"`
			MarketValue   string `json:"market_value"`
			UnrealizedPnL string `json:"unrealized_pnl"`
		} `json:"positions"`
	}
	r, err = a.do(ctx, http.MethodGet, "/api/positions", trader, nil)
	if err != nil {
		return err
	}
	if err := r.want(http.StatusOK, "positions", &pos); err != nil {
		return err
	}
	p.line("GET /api/positions -> %d, %d position(s)", r.status, len(pos.Positions))
	for _, x := range pos.Positions {
		p.line("  position %s quantity %s avg entry %s mark %s market value %s unrealized P&L %s",
			x.Symbol, x.Quantity, x.AvgEntryPrice, x.MarkPrice, x.MarketValue, x.UnrealizedPnL)
	}
	r, err = a.do(ctx, http.MethodGet, "/api/positions", trader, nil)
	if err != nil {
		return err
	}
	if err := r.want(http.StatusOK, "positions", nil); err != nil {
		return err
	}
	p.line("GET /api/positions -> %d again, now from the cache (see cache_hits_total below)", r.status)
	var summary map[string]any
	r, err = a.do(ctx, http.MethodGet, "/api/summary", trader, nil)
	if err != nil {
		return err
	}
	if err := r.want(http.StatusOK, "summary", &summary); err != nil {
		return err
	}
	p.line("GET /api/summary -> %d", r.status)
	for _, k := range []string{"positions_count", "gross_exposure", "net_exposure", "realized_pnl", "unrealized_pnl", "trades_today", "pending_orders"} {
		p.line("  %-16s %v", k, summary[k])
	}

	p.step("trader1 sends orders quickly until the trading limit (RATE_LIMIT_TRADING per minute) refuses one")
	limited := false
	for i := 2; i <= 12 && !limited; i++ {
		r, err = a.do(ctx, http.MethodPost, "/api/orders", trader, map[string]string{
			"symbol": "ETH/USD", "side": "buy", "quantity": "1", "price": "3000", "client_order_id": fmt.Sprintf("demo-%d", i),
		})
		if err != nil {
			return err
		}
		switch r.status {
		case http.StatusCreated:
			p.line("POST /api/orders {ETH/USD buy 1 @ 3000} -> %d (RateLimit-Remaining %s)", r.status, r.header.Get("RateLimit-Remaining"))
		case http.StatusTooManyRequests:
			p.line("POST /api/orders {ETH/USD buy 1 @ 3000} -> 429 Too Many Requests, Retry-After: %s (RateLimit-Limit %s)",
				r.header.Get("Retry-After"), r.header.Get("RateLimit-Limit"))
			limited = true
		default:
			return r.want(http.StatusCreated, "order", nil)
		}
	}
	if !limited {
		return fmt.Errorf("no order was rate limited")
	}

	p.step("an excerpt of %s/metrics", srv.admin)
	m := api{base: srv.admin, hc: a.hc}
	r, err = m.do(ctx, http.MethodGet, "/metrics", "", nil)
	if err != nil {
		return err
	}
	if err := r.want(http.StatusOK, "metrics", nil); err != nil {
		return err
	}
	shown := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"api_requests_total", "trades_total", "cache_hits_total", "rate_limit_rejections_total"} {
			// Rejections: only the classes that refused something.
			if name == "rate_limit_rejections_total" && strings.HasSuffix(line, " 0") {
				continue
			}
			if strings.HasPrefix(line, name+"{") && shown[name] < 8 {
				shown[name]++
				p.line("%s", line)
			}
		}
	}
	return nil
}
