package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/inboxd/inboxd/daemon/users"
)

const (
	// clockLeeway is the allowed clock skew for exp and nbf.
	clockLeeway = 60 * time.Second
	// minRefreshInterval limits JWKS fetches: unknown key ids (new keys after
	// a rotation, or garbage) cause at most one fetch per interval.
	minRefreshInterval = 10 * time.Second
	// jwksMaxAge: keys older than this are refreshed on use, so that keys the
	// issuer withdrew stop being accepted.
	jwksMaxAge = time.Hour
	// maxJWT bounds the size of a bearer JWT.
	maxJWT = 16 << 10
	// maxFetchBody bounds the discovery document and the JWKS.
	maxFetchBody = 1 << 20
	minRSABits   = 2048
	maxRSABits   = 8192
)

func (a *Authenticator) resolveOIDC(r *http.Request) (users.User, error) {
	tok, err := bearer(r)
	if err != nil {
		return users.User{}, err
	}
	if !looksLikeJWT(tok) {
		// Not a JWT: API keys are accepted in mode oidc too.
		return a.userByAPIKey(r.Context(), tok)
	}
	sub, email, err := a.verifyJWT(r.Context(), tok)
	if err != nil {
		return users.User{}, err
	}
	u, err := a.store.FindOrCreateBySubject(r.Context(), sub, email)
	if err != nil {
		return users.User{}, fmt.Errorf("auth: find or create user by subject: %w", err)
	}
	return u, nil
}

// looksLikeJWT reports whether tok has the JWS compact shape: three
// dot-separated parts, the first a base64url JSON object.
func looksLikeJWT(tok string) bool {
	if strings.Count(tok, ".") != 2 {
		return false
	}
	h, _, _ := strings.Cut(tok, ".")
	hdr, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return false
	}
	hdr = bytes.TrimSpace(hdr)
	return len(hdr) > 0 && hdr[0] == '{'
}

type jwtHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

// verifyJWT checks an RS256 JWT against the issuer's keys and claims and
// returns its subject and (trusted) email.
func (a *Authenticator) verifyJWT(ctx context.Context, tok string) (sub, email string, err error) {
	if len(tok) > maxJWT {
		return "", "", badToken("token too large")
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", "", badToken("malformed token")
	}
	hdrJSON, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return "", "", badToken("malformed token header")
	}
	var hdr jwtHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return "", "", badToken("malformed token header")
	}
	if hdr.Alg != "RS256" {
		return "", "", badToken("token algorithm must be RS256")
	}
	if hdr.Crit != nil {
		return "", "", badToken("token has unsupported critical header parameters")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) == 0 {
		return "", "", badToken("malformed token signature")
	}
	key, err := a.keys.key(ctx, hdr.Kid)
	if err != nil {
		return "", "", err
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], sig); err != nil {
		return "", "", badToken("bad token signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", badToken("malformed token claims")
	}
	return a.checkClaims(payload)
}

func (a *Authenticator) checkClaims(payload []byte) (sub, email string, err error) {
	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return "", "", badToken("malformed token claims")
	}
	if iss, _ := claims["iss"].(string); strings.TrimRight(iss, "/") != a.issuer {
		return "", "", badToken("wrong token issuer")
	}
	if !audienceContains(claims["aud"], a.audience) {
		return "", "", badToken("wrong token audience")
	}
	now := a.now()
	exp, ok := numericDate(claims["exp"])
	if !ok {
		return "", "", badToken("token has no expiry")
	}
	if !now.Before(exp.Add(clockLeeway)) {
		return "", "", badToken("token expired")
	}
	if v, present := claims["nbf"]; present {
		nbf, ok := numericDate(v)
		if !ok {
			return "", "", badToken("malformed token nbf")
		}
		if now.Add(clockLeeway).Before(nbf) {
			return "", "", badToken("token not valid yet")
		}
	}
	sub, _ = claims["sub"].(string)
	if sub == "" {
		return "", "", badToken("token has no subject")
	}
	email, _ = claims[a.emailClaim].(string)
	// An email the issuer says it has not verified is not trusted: admin
	// rights can be granted by email (Config.Admins).
	if v, present := claims["email_verified"]; present {
		if b, ok := v.(bool); (ok && !b) || (!ok && v == "false") {
			email = ""
		}
	}
	return sub, email, nil
}

func audienceContains(aud any, want string) bool {
	switch v := aud.(type) {
	case string:
		return v == want
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}

// numericDate parses a JWT NumericDate (seconds since the epoch, possibly
// fractional).
func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > 1e12 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// keySet caches the issuer's RSA signing keys by key id. Keys are fetched on
// first use, when a token names an unknown key id, and when older than
// jwksMaxAge; fetches are single-flight and at most one per
// minRefreshInterval, so garbage tokens cannot hammer the issuer.
type keySet struct {
	issuer string // without trailing slash
	client *http.Client
	log    *slog.Logger
	now    func() time.Time

	mu        sync.Mutex
	keys      map[string]*rsa.PublicKey
	fetchedAt time.Time     // last successful fetch
	triedAt   time.Time     // last fetch attempt
	jwksURI   string        // from discovery, once known
	inflight  chan struct{} // closed when the running fetch ends
}

// key returns the signing key kid, fetching the JWKS when needed and allowed.
func (s *keySet) key(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	s.mu.Lock()
	k, known := s.keys[kid]
	now := s.now()
	stale := now.Sub(s.fetchedAt) > jwksMaxAge
	if known && !stale {
		s.mu.Unlock()
		return k, nil
	}
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		if known {
			return k, nil // stale, and a refresh is under way
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, unauthenticated("request cancelled while fetching signing keys")
		}
		s.mu.Lock()
		k, known = s.keys[kid]
		s.mu.Unlock()
		if !known {
			return nil, badToken("unknown token signing key")
		}
		return k, nil
	}
	if !s.triedAt.IsZero() && now.Sub(s.triedAt) < minRefreshInterval {
		s.mu.Unlock()
		if known {
			return k, nil
		}
		return nil, badToken("unknown token signing key")
	}
	ch := make(chan struct{})
	s.inflight = ch
	s.triedAt = now
	s.mu.Unlock()

	keys, err := s.fetch(ctx)

	s.mu.Lock()
	if err == nil {
		s.keys = keys
		s.fetchedAt = s.now()
	}
	s.inflight = nil
	close(ch)
	nk, nknown := s.keys[kid]
	s.mu.Unlock()

	if err != nil {
		s.log.WarnContext(ctx, "auth: cannot fetch the OIDC issuer's signing keys", "issuer", s.issuer, "err", err)
		if known {
			return k, nil // keep using the stale key while the issuer is unreachable
		}
		return nil, badToken("cannot verify token: signing keys unavailable")
	}
	if !nknown {
		return nil, badToken("unknown token signing key")
	}
	return nk, nil
}

// fetch loads the JWKS: jwks_uri from the discovery document, falling back to
// {issuer}/.well-known/jwks.json. It does not hold s.mu except to read and
// write jwksURI; only one fetch runs at a time.
func (s *keySet) fetch(ctx context.Context) (map[string]*rsa.PublicKey, error) {
	// The fetch serves every request waiting for it: one caller going away
	// must not cancel it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpTimeout)
	defer cancel()

	s.mu.Lock()
	uri := s.jwksURI
	s.mu.Unlock()
	if uri == "" {
		var err error
		uri, err = s.discover(ctx)
		if errors.Is(err, errIssuerMismatch) {
			return nil, err
		}
		if err != nil {
			s.log.DebugContext(ctx, "auth: OIDC discovery failed; trying the default JWKS location", "issuer", s.issuer, "err", err)
			uri = s.issuer + "/.well-known/jwks.json"
		}
	}
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := s.getJSON(ctx, uri, &doc); err != nil {
		return nil, fmt.Errorf("auth: fetch JWKS: %w", err)
	}
	keys := make(map[string]*rsa.PublicKey, len(doc.Keys))
	for _, j := range doc.Keys {
		k, err := j.rsaKey()
		if err != nil {
			s.log.DebugContext(ctx, "auth: skipping JWKS key", "kid", j.Kid, "err", err)
			continue
		}
		keys[j.Kid] = k
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth: JWKS at %s has no usable RS256 signing key", uri)
	}
	s.mu.Lock()
	s.jwksURI = uri
	s.mu.Unlock()
	return keys, nil
}

var errIssuerMismatch = errors.New("auth: the discovery document names another issuer")

func (s *keySet) discover(ctx context.Context) (string, error) {
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := s.getJSON(ctx, s.issuer+"/.well-known/openid-configuration", &doc); err != nil {
		return "", err
	}
	if doc.Issuer != "" && strings.TrimRight(doc.Issuer, "/") != s.issuer {
		return "", fmt.Errorf("%w: %q", errIssuerMismatch, doc.Issuer)
	}
	if doc.JWKSURI == "" {
		return "", errors.New("auth: the discovery document has no jwks_uri")
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("auth: jwks_uri: %w", err)
	}
	return doc.JWKSURI, nil
}

func (s *keySet) getJSON(ctx context.Context, uri string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxFetchBody))
		return fmt.Errorf("GET %s: %s", uri, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxFetchBody)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", uri, err)
	}
	return nil
}

// jwk is one JSON Web Key; only RSA signing keys are used.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func (j jwk) rsaKey() (*rsa.PublicKey, error) {
	if j.Kty != "RSA" {
		return nil, fmt.Errorf("key type %q is not RSA", j.Kty)
	}
	if j.Use != "" && j.Use != "sig" {
		return nil, fmt.Errorf("key use %q is not sig", j.Use)
	}
	if j.Alg != "" && j.Alg != "RS256" {
		return nil, fmt.Errorf("key algorithm %q is not RS256", j.Alg)
	}
	nb, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(j.N, "="))
	if err != nil {
		return nil, errors.New("bad modulus")
	}
	eb, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(j.E, "="))
	if err != nil || len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New("bad exponent")
	}
	var e int
	for _, b := range eb {
		e = e<<8 | int(b)
	}
	if e < 3 || e%2 == 0 {
		return nil, errors.New("bad exponent")
	}
	n := new(big.Int).SetBytes(nb)
	if bits := n.BitLen(); bits < minRSABits || bits > maxRSABits {
		return nil, fmt.Errorf("modulus of %d bits (want %d to %d)", bits, minRSABits, maxRSABits)
	}
	return &rsa.PublicKey{N: n, E: e}, nil
}
