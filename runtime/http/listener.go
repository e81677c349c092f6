package http

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// WrapListener returns ln with the answers net/http writes itself, before any handler, turned
// into this API's: a request it cannot parse (header fields over http.Server.MaxHeaderBytes:
// 431; a malformed request line, header or Host: 400; an unknown transfer coding: 501) is
// answered on the raw connection in text/plain, and one whose Expect is not 100-continue
// with an empty 417, both without the headers every response carries (api.md: security
// headers, X-Request-ID, problem+json errors). Serve the API and the admin
// port on it. It must see the plain HTTP bytes: a TLS listener goes around it, not under it.
func WrapListener(ln net.Listener) net.Listener { return protocolErrorListener{ln} }

type protocolErrorListener struct{ net.Listener }

func (l protocolErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if cw, ok := c.(closeWriter); ok {
		// net/http half-closes the connection after a 431 (CloseWrite), so that the client
		// reads the answer before the reset: keep that possible.
		return &protocolErrorCloseWriteConn{protocolErrorConn{c}, cw}, nil
	}
	return &protocolErrorConn{c}, nil
}

type closeWriter interface{ CloseWrite() error }

type protocolErrorConn struct{ net.Conn }

// Write passes every write through but the answer of a request net/http could not parse:
// one write, "HTTP/1.1 NNN ..." followed at once by net/http's errorHeaders (a handler's
// answer never is: its first header is Cache-Control), which is replaced by ours; and the
// 417 net/http gives to an Expect other than 100-continue, before any handler.
func (c *protocolErrorConn) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte(netHTTPExpectationFailed)) {
		if _, err := c.Conn.Write(protocolErrorResponse(http.StatusExpectationFailed, "")); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if status, detail, ok := parseProtocolError(p); ok {
		if _, err := c.Conn.Write(protocolErrorResponse(status, detail)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

type protocolErrorCloseWriteConn struct {
	protocolErrorConn
	cw closeWriter
}

func (c *protocolErrorCloseWriteConn) CloseWrite() error { return c.cw.CloseWrite() }

// netHTTPErrorHeaders are the header lines of net/http's own error answers (net/http
// server.go, conn.serve).
const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// netHTTPExpectationFailed starts net/http's answer to an Expect it does not know
// (response.sendExpectationFailed): written through the response writer, so not in the
// shape of its other error answers, with Connection as its first header (sorted: a
// handler's first is Allow or Cache-Control, and no handler answers 417).
const netHTTPExpectationFailed = "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\n"

// parseProtocolError recognizes net/http's own error answer and returns its status and the
// text it gives (the reason after "NNN Status Text: ", when there is one).
func parseProtocolError(p []byte) (status int, detail string, ok bool) {
	const prefix = "HTTP/1.1 "
	if len(p) < len(prefix)+3 || string(p[:len(prefix)]) != prefix {
		return 0, "", false
	}
	line, rest, found := bytes.Cut(p, []byte("\r\n"))
	if !found || !bytes.HasPrefix(p[len(line):], []byte(netHTTPErrorHeaders)) {
		return 0, "", false
	}
	status, err := strconv.Atoi(string(line[len(prefix) : len(prefix)+3]))
	if err != nil || status < 400 {
		return 0, "", false
	}
	body := string(rest[len(netHTTPErrorHeaders)-2:])
	// "400 Bad Request: malformed Host header": the text after the status; a body that is
	// only "431 Request Header Fields Too Large" says nothing more than the status.
	head := strconv.Itoa(status) + " " + http.StatusText(status)
	switch {
	case strings.HasPrefix(body, head+": "):
		detail = strings.TrimPrefix(body, head+": ")
	case body == head:
		detail = ""
	default:
		detail = body
	}
	return status, detail, true
}

// protocolErrorDetails say more than net/http's texts, which are for its own plain answers.
var protocolErrorDetails = map[int]string{
	http.StatusRequestHeaderFieldsTooLarge: "the request's header fields are too large",
	http.StatusBadRequest:                  "the request is not valid HTTP",
	http.StatusNotImplemented:              "the request uses a transfer coding this server does not support",
	http.StatusExpectationFailed:           "the request's Expect header asks for something other than 100-continue",
}

// protocolErrorResponse is the answer of a request net/http could not parse: the headers of
// every response (no request id could be read, so a new one), problem+json, and the
// connection closed, as net/http does.
func protocolErrorResponse(status int, detail string) []byte {
	switch {
	case detail == "" || detail == "Unsupported transfer encoding":
		detail = protocolErrorDetails[status]
	case status == http.StatusBadRequest:
		detail = "the request is not valid HTTP: " + detail
	}
	if detail == "" {
		detail = http.StatusText(status)
	}
	body, _ := json.Marshal(Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail})
	body = append(body, '\n')

	h := http.Header{}
	setCommonHeaders(h, uuid.NewString())
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Connection", "close")
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n")
	_ = h.Write(&b) // sorted, as net/http writes a handler's
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}
