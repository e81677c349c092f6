package http

import (
	"context"
	"net/http"
	"strings"
	"time"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/jwt"
)

// authenticate lets a request through only with a valid bearer access token and puts its
// principal into the context. Roles are the services' business, not this layer's. A request
// it refuses goes to refused, with the error in its context (refuseUnauthenticated answers it).
func (s *Server) authenticate(next, refused http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(err error) {
			refused.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), authErrorKey{}, err)))
		}
		token, ok := bearerToken(r)
		if !ok {
			refuse(trading.Errorf(trading.EUNAUTHORIZED, "a bearer access token is required"))
			return
		}
		p, err := s.cfg.Tokens.Verify(token)
		if err != nil {
			refuse(err)
			return
		}
		switch alive, err := s.sessions.alive(r.Context(), p.SessionID); {
		case err != nil:
			refuse(err)
			return
		case !alive:
			refuse(trading.Errorf(trading.EUNAUTHORIZED, "the login of this access token has ended"))
			return
		}
		infoFrom(r.Context()).user = p.UserID.String()
		next.ServeHTTP(w, r.WithContext(trading.NewContextWithPrincipal(r.Context(), p)))
	})
}

type authErrorKey struct{}

// refuseUnauthenticated answers the error authenticate refused a request with.
func (s *Server) refuseUnauthenticated(w http.ResponseWriter, r *http.Request) {
	err, _ := r.Context().Value(authErrorKey{}).(error)
	if err == nil {
		err = trading.Errorf(trading.EUNAUTHORIZED, "a bearer access token is required")
	}
	s.Error(w, r, err)
}

// bearerToken reads "Authorization: Bearer <token>" (scheme case-insensitive, RFC 9110).
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// principal is the caller of an authenticated route; authenticate guarantees it is there.
func principal(r *http.Request) trading.Principal {
	p, _ := trading.PrincipalFromContext(r.Context())
	return p
}

type loginRequest struct {
	Username *string `json:"username"`
	Password *string `json:"password"`
}

type refreshRequest struct {
	RefreshToken *string `json:"refresh_token"`
}

// TokenPair is the answer of login and refresh.
type TokenPair struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
}

// errBadLogin is the one answer for an unknown user and a wrong password, so that the
// body does not tell them apart (the user service makes the timing comparable).
var errBadLogin = trading.Errorf(trading.EUNAUTHORIZED, "invalid username or password")

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := s.decode(w, r, &req); err != nil {
		s.decodeFailed(w, r, err)
		return
	}
	var fields []trading.FieldError
	if req.Username == nil || *req.Username == "" {
		fields = append(fields, trading.FieldError{Field: "username", Message: "is required"})
	}
	if req.Password == nil || *req.Password == "" {
		fields = append(fields, trading.FieldError{Field: "password", Message: "is required"})
	}
	if fields != nil {
		s.Error(w, r, trading.Invalid(fields...))
		return
	}
	u, err := s.svc.Users.Authenticate(r.Context(), *req.Username, *req.Password)
	if trading.ErrorCode(err) == trading.EUNAUTHORIZED || trading.ErrorCode(err) == trading.ENOTFOUND {
		s.Error(w, r, errBadLogin)
		return
	} else if err != nil {
		s.Error(w, r, err)
		return
	}
	refresh, hash, err := jwt.NewRefreshToken()
	if err != nil {
		s.Error(w, r, err)
		return
	}
	sid, err := s.svc.Sessions.CreateSession(r.Context(), u.ID, u.Roles, hash, time.Now().Add(s.cfg.RefreshTTL))
	if trading.ErrorCode(err) == trading.ENOTFOUND {
		s.Error(w, r, errBadLogin) // deleted since its password was checked
		return
	} else if err != nil {
		s.Error(w, r, err)
		return
	}
	s.issue(w, r, trading.Principal{UserID: u.ID, Username: u.Username, Roles: u.Roles, SessionID: sid}, refresh)
}

func (s *Server) handleRefresh(w http.ResponseWriter, r *http.Request) {
	old, ok := s.readRefreshToken(w, r)
	if !ok {
		return
	}
	refresh, hash, err := jwt.NewRefreshToken()
	if err != nil {
		s.Error(w, r, err)
		return
	}
	// Roles come from the database (read with the rotation), not the old access token. (A
	// change of roles ends the user's logins, so a refresh after one is refused.)
	u, sid, err := s.svc.Sessions.RotateRefreshToken(r.Context(), jwt.HashRefreshToken(old), hash, time.Now().Add(s.cfg.RefreshTTL))
	if err != nil {
		// Reuse revoked the login: its access tokens end here at once (other replicas
		// within SessionCheckTTL).
		s.sessions.endedHere(r.Context(), sid)
		s.Error(w, r, err)
		return
	}
	s.issue(w, r, trading.Principal{UserID: u.ID, Username: u.Username, Roles: u.Roles, SessionID: sid}, refresh)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	token, ok := s.readRefreshToken(w, r)
	if !ok {
		return
	}
	sid, err := s.svc.Sessions.RevokeSession(r.Context(), jwt.HashRefreshToken(token))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	s.sessions.endedHere(r.Context(), sid)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) readRefreshToken(w http.ResponseWriter, r *http.Request) (string, bool) {
	var req refreshRequest
	if err := s.decode(w, r, &req); err != nil {
		s.decodeFailed(w, r, err)
		return "", false
	}
	if req.RefreshToken == nil || *req.RefreshToken == "" {
		s.Error(w, r, trading.Invalid(trading.FieldError{Field: "refresh_token", Message: "is required"}))
		return "", false
	}
	return *req.RefreshToken, true
}

func (s *Server) issue(w http.ResponseWriter, r *http.Request, p trading.Principal, refresh string) {
	access, ttl, err := s.cfg.Tokens.Issue(p)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	infoFrom(r.Context()).user = p.UserID.String()
	writeJSON(w, http.StatusOK, TokenPair{
		AccessToken:  access,
		RefreshToken: refresh,
		TokenType:    "Bearer",
		ExpiresIn:    int64(ttl / time.Second),
	})
}

// Me is the answer of GET /api/auth/me.
type Me struct {
	ID       string         `json:"id"`
	Username string         `json:"username"`
	Roles    []trading.Role `json:"roles"`
}

func (s *Server) handleMe(w http.ResponseWriter, r *http.Request) {
	u, err := s.svc.Users.FindUserByID(r.Context(), principal(r).UserID)
	if trading.ErrorCode(err) == trading.ENOTFOUND {
		// The token outlived its user.
		s.Error(w, r, trading.Errorf(trading.EUNAUTHORIZED, "the user no longer exists"))
		return
	} else if err != nil {
		s.Error(w, r, err)
		return
	}
	roles := u.Roles
	if roles == nil {
		roles = []trading.Role{}
	}
	writeJSON(w, http.StatusOK, Me{ID: u.ID.String(), Username: u.Username, Roles: roles})
}
