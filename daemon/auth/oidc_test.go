package auth

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testAudience = "https://inboxd.example.com/api"

// testKey is an RSA signing key of the test issuer.
type testKey struct {
	kid  string
	priv *rsa.PrivateKey
}

func newTestKey(t *testing.T, kid string) testKey {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, priv: priv}
}

// testIssuer is a local OIDC issuer: a discovery document and a JWKS served
// from keys the test controls, with request counters.
type testIssuer struct {
	srv *httptest.Server

	mu          sync.Mutex
	keys        []testKey
	noDiscovery bool   // answer 404 for the discovery document
	docIssuer   string // issuer named by the discovery document; default the real one
	down        bool   // answer 503 everywhere

	jwksHits      atomic.Int32
	discoveryHits atomic.Int32
}

func newTestIssuer(t *testing.T, keys ...testKey) *testIssuer {
	t.Helper()
	iss := &testIssuer{keys: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		iss.discoveryHits.Add(1)
		iss.mu.Lock()
		noDiscovery, docIssuer, down := iss.noDiscovery, iss.docIssuer, iss.down
		iss.mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if noDiscovery {
			http.NotFound(w, r)
			return
		}
		if docIssuer == "" {
			docIssuer = iss.url()
		}
		writeTestJSON(w, map[string]any{"issuer": docIssuer, "jwks_uri": iss.srv.URL + "/keys"})
	})
	jwks := func(w http.ResponseWriter, r *http.Request) {
		iss.jwksHits.Add(1)
		iss.mu.Lock()
		defer iss.mu.Unlock()
		if iss.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		keys := []map[string]string{
			// Keys a verifier must skip.
			{"kty": "EC", "kid": "ec-key", "crv": "P-256", "x": "AA", "y": "AA"},
			{"kty": "RSA", "kid": "enc-key", "use": "enc", "n": "AQAB", "e": "AQAB"},
		}
		for _, k := range iss.keys {
			keys = append(keys, map[string]string{
				"kty": "RSA", "kid": k.kid, "use": "sig", "alg": "RS256",
				"n": base64.RawURLEncoding.EncodeToString(k.priv.N.Bytes()),
				"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.priv.E)).Bytes()),
			})
		}
		writeTestJSON(w, map[string]any{"keys": keys})
	}
	mux.HandleFunc("GET /keys", jwks)
	mux.HandleFunc("GET /.well-known/jwks.json", jwks)
	iss.srv = httptest.NewServer(mux)
	t.Cleanup(iss.srv.Close)
	return iss
}

// url is the issuer as Auth0 spells it, with a trailing slash.
func (i *testIssuer) url() string { return i.srv.URL + "/" }

func (i *testIssuer) setKeys(keys ...testKey) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = keys
}

func (i *testIssuer) setDown(down bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.down = down
}

func writeTestJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func b64JSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// signJWT is the test-only signer: RS256 over header and claims.
func signJWT(t *testing.T, k testKey, header, claims map[string]any) string {
	t.Helper()
	if header == nil {
		header = map[string]any{"alg": "RS256", "typ": "JWT", "kid": k.kid}
	}
	signing := b64JSON(t, header) + "." + b64JSON(t, claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k.priv, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// claimsFor returns valid claims for sub at now; edit the map to break them.
func claimsFor(iss *testIssuer, sub string, now time.Time) map[string]any {
	return map[string]any{
		"iss":   iss.url(),
		"aud":   []string{testAudience, iss.url() + "userinfo"},
		"sub":   sub,
		"email": sub + "@example.com",
		"iat":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
	}
}

func with(claims map[string]any, edits map[string]any) map[string]any {
	out := make(map[string]any, len(claims))
	for k, v := range claims {
		out[k] = v
	}
	for k, v := range edits {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func newOIDCAuth(t *testing.T, iss *testIssuer, clock *testClock, store *fakeUserStore) *Authenticator {
	t.Helper()
	return newTestAuth(t, Config{
		Mode:         ModeOIDC,
		OIDCIssuer:   iss.url(),
		OIDCAudience: testAudience,
		HTTPClient:   iss.srv.Client(),
	}, store, nil, clock)
}

func TestOIDCTokens(t *testing.T) {
	k1 := newTestKey(t, "k1")
	evil := newTestKey(t, "k1") // another key under the same kid
	iss := newTestIssuer(t, k1)
	clock := newTestClock()
	store := newFakeUserStore()
	a := newOIDCAuth(t, iss, clock, store)
	now := clock.Now()

	apiUser := store.addUser("local@example.com", false)
	store.addAPIKey("local-api-key", apiUser.ID)

	good := claimsFor(iss, "auth0|alice", now)
	signed := func(claims map[string]any) string { return signJWT(t, k1, nil, claims) }
	hs256 := func() string {
		// The classic confusion attack: HMAC keyed with the public key.
		h := b64JSON(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": "k1"}) + "." + b64JSON(t, good)
		m := hmac.New(sha256.New, k1.priv.N.Bytes())
		m.Write([]byte(h))
		return h + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	rs512 := func() string {
		h := b64JSON(t, map[string]any{"alg": "RS512", "kid": "k1"}) + "." + b64JSON(t, good)
		d := sha512.Sum512([]byte(h))
		sig, err := rsa.SignPKCS1v15(rand.Reader, k1.priv, crypto.SHA512, d[:])
		if err != nil {
			t.Fatal(err)
		}
		return h + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	tampered := func() string {
		parts := strings.Split(signed(good), ".")
		parts[1] = b64JSON(t, with(good, map[string]any{"sub": "auth0|mallory"}))
		return strings.Join(parts, ".")
	}

	tests := []struct {
		name    string
		token   string
		err     error
		sub     string // expected AuthSubject on success
		email   string // expected email on success ("-" to skip)
		reason  string // expected in the error
		setup   func()
		cleanup func()
	}{
		{name: "valid", token: signed(good), sub: "auth0|alice", email: "auth0|alice@example.com"},
		{name: "valid again, same user", token: signed(good), sub: "auth0|alice", email: "-"},
		{name: "aud as string", token: signed(with(good, map[string]any{"aud": testAudience})), sub: "auth0|alice", email: "-"},
		{name: "iss without trailing slash", token: signed(with(good, map[string]any{"iss": strings.TrimSuffix(iss.url(), "/")})), sub: "auth0|alice", email: "-"},
		{name: "expired within leeway", token: signed(with(good, map[string]any{"sub": "auth0|leeway", "exp": now.Add(-30 * time.Second).Unix()})), sub: "auth0|leeway", email: "-"},
		{name: "nbf within leeway", token: signed(with(good, map[string]any{"sub": "auth0|nbf", "nbf": now.Add(30 * time.Second).Unix()})), sub: "auth0|nbf", email: "-"},
		{name: "unverified email not trusted", token: signed(with(good, map[string]any{"sub": "auth0|unverified", "email_verified": false})), sub: "auth0|unverified", email: ""},
		{name: "wrong audience", token: signed(with(good, map[string]any{"aud": "https://other.example.com"})), err: ErrUnauthenticated, reason: "audience"},
		{name: "audience list without ours", token: signed(with(good, map[string]any{"aud": []string{"a", "b"}})), err: ErrUnauthenticated, reason: "audience"},
		{name: "no audience", token: signed(with(good, map[string]any{"aud": nil})), err: ErrUnauthenticated, reason: "audience"},
		{name: "wrong issuer", token: signed(with(good, map[string]any{"iss": "https://evil.example.com/"})), err: ErrUnauthenticated, reason: "issuer"},
		{name: "expired", token: signed(with(good, map[string]any{"exp": now.Add(-2 * time.Minute).Unix()})), err: ErrUnauthenticated, reason: "expired"},
		{name: "no exp", token: signed(with(good, map[string]any{"exp": nil})), err: ErrUnauthenticated, reason: "no expiry"},
		{name: "exp as string", token: signed(with(good, map[string]any{"exp": "9999999999"})), err: ErrUnauthenticated, reason: "no expiry"},
		{name: "nbf in future", token: signed(with(good, map[string]any{"nbf": now.Add(5 * time.Minute).Unix()})), err: ErrUnauthenticated, reason: "not valid yet"},
		{name: "missing sub", token: signed(with(good, map[string]any{"sub": nil})), err: ErrUnauthenticated, reason: "no subject"},
		{name: "empty sub", token: signed(with(good, map[string]any{"sub": ""})), err: ErrUnauthenticated, reason: "no subject"},
		{name: "bad signature, same kid", token: signJWT(t, evil, nil, good), err: ErrUnauthenticated, reason: "signature"},
		{name: "tampered claims", token: tampered(), err: ErrUnauthenticated, reason: "signature"},
		{name: "alg none", token: b64JSON(t, map[string]any{"alg": "none"}) + "." + b64JSON(t, good) + ".", err: ErrUnauthenticated, reason: "RS256"},
		{name: "alg HS256", token: hs256(), err: ErrUnauthenticated, reason: "RS256"},
		{name: "alg RS512", token: rs512(), err: ErrUnauthenticated, reason: "RS256"},
		{name: "crit header", token: signJWT(t, k1, map[string]any{"alg": "RS256", "kid": "k1", "crit": []string{"exp"}}, good), err: ErrUnauthenticated, reason: "critical"},
		{name: "API key accepted", token: "local-api-key", sub: "", email: "local@example.com"},
		{name: "unknown API key", token: "no-such-key", err: ErrUnauthenticated, reason: "unknown API key"},
		{
			name: "disabled user", token: signed(good), err: ErrDisabled,
			setup: func() {
				u, _ := store.bySubject("auth0|alice")
				store.setDisabled(u.ID, true)
			},
			cleanup: func() {
				u, _ := store.bySubject("auth0|alice")
				store.setDisabled(u.ID, false)
			},
		},
		{
			name: "disabled API key user", token: "local-api-key", err: ErrDisabled,
			setup:   func() { store.setDisabled(apiUser.ID, true) },
			cleanup: func() { store.setDisabled(apiUser.ID, false) },
		},
	}
	var aliceID string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			if tt.cleanup != nil {
				defer tt.cleanup()
			}
			u, err := a.Resolve(requestWith("Bearer " + tt.token))
			wantErrKind(t, err, tt.err)
			if tt.err != nil {
				if !strings.Contains(err.Error(), tt.reason) {
					t.Fatalf("err = %v, want it to say %q", err, tt.reason)
				}
				return
			}
			if u.AuthSubject != tt.sub {
				t.Fatalf("AuthSubject = %q, want %q", u.AuthSubject, tt.sub)
			}
			if tt.email != "-" && u.Email != tt.email {
				t.Fatalf("Email = %q, want %q", u.Email, tt.email)
			}
			if tt.sub == "auth0|alice" {
				if aliceID == "" {
					aliceID = u.ID.String()
				} else if u.ID.String() != aliceID {
					t.Fatalf("second token for the same sub gave user %s, first %s", u.ID, aliceID)
				}
			}
		})
	}
	if n := iss.jwksHits.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want once (keys are cached)", n)
	}
	if n := iss.discoveryHits.Load(); n != 1 {
		t.Errorf("discovery fetched %d times, want once", n)
	}
}

func TestOIDCMiddleware(t *testing.T) {
	k1 := newTestKey(t, "k1")
	iss := newTestIssuer(t, k1)
	clock := newTestClock()
	store := newFakeUserStore()
	a := newOIDCAuth(t, iss, clock, store)
	good := claimsFor(iss, "auth0|carol", clock.Now())

	tests := []struct {
		name      string
		header    string
		status    int
		challenge string
	}{
		{"valid", "Bearer " + signJWT(t, k1, nil, good), http.StatusOK, ""},
		{"no token", "", http.StatusUnauthorized, `Bearer realm="inboxd"`},
		{"expired", "Bearer " + signJWT(t, k1, nil, with(good, map[string]any{"exp": clock.Now().Add(-time.Hour).Unix()})), http.StatusUnauthorized, `Bearer realm="inboxd", error="invalid_token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if u, ok := UserFrom(r.Context()); !ok || u.AuthSubject != "auth0|carol" {
					t.Errorf("UserFrom = %+v, %v", u, ok)
				}
			})).ServeHTTP(rec, requestWith(tt.header))
			if rec.Code != tt.status {
				t.Fatalf("status = %d, want %d (%s)", rec.Code, tt.status, rec.Body)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tt.challenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.challenge)
			}
			if tt.status != http.StatusOK {
				if e := decodeAPIError(t, rec); e.Error.Code != "unauthenticated" {
					t.Errorf("code = %q", e.Error.Code)
				}
			}
		})
	}
}

// resolveConcurrently resolves token from n goroutines at once and returns the errors.
func resolveConcurrently(a *Authenticator, n int, token string) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = a.Resolve(requestWith("Bearer " + token))
		})
	}
	close(start)
	wg.Wait()
	return errs
}

func TestOIDCKeyRotation(t *testing.T) {
	k1 := newTestKey(t, "k1")
	k2 := newTestKey(t, "k2")
	stranger := newTestKey(t, "garbage-kid")
	iss := newTestIssuer(t, k1)
	clock := newTestClock()
	store := newFakeUserStore()
	a := newOIDCAuth(t, iss, clock, store)
	claims := func() map[string]any { return claimsFor(iss, "auth0|dave", clock.Now()) }

	steps := []struct {
		name     string
		advance  time.Duration
		rotate   []testKey // when set, the issuer serves these keys from now on
		token    func() string
		n        int // concurrent requests
		err      error
		wantJWKS int32 // JWKS fetches so far
	}{
		{name: "first token fetches the keys once", token: func() string { return signJWT(t, k1, nil, claims()) }, n: 20, wantJWKS: 1},
		{name: "cached", token: func() string { return signJWT(t, k1, nil, claims()) }, n: 20, wantJWKS: 1},
		{name: "unknown kid right after a fetch: no fetch", token: func() string { return signJWT(t, stranger, nil, claims()) }, n: 20, err: ErrUnauthenticated, wantJWKS: 1},
		{name: "unknown kid burst later: one fetch", advance: 11 * time.Second, token: func() string { return signJWT(t, stranger, nil, claims()) }, n: 20, err: ErrUnauthenticated, wantJWKS: 2},
		{name: "unknown kid again within 10s: no fetch", advance: 5 * time.Second, token: func() string { return signJWT(t, stranger, nil, claims()) }, n: 20, err: ErrUnauthenticated, wantJWKS: 2},
		{name: "rotated key accepted after one refresh", advance: 11 * time.Second, rotate: []testKey{k2}, token: func() string { return signJWT(t, k2, nil, claims()) }, n: 20, wantJWKS: 3},
		{name: "withdrawn key refused", token: func() string { return signJWT(t, k1, nil, claims()) }, n: 5, err: ErrUnauthenticated, wantJWKS: 3},
		{name: "rotated key cached", advance: 30 * time.Second, token: func() string { return signJWT(t, k2, nil, claims()) }, n: 20, wantJWKS: 3},
		{name: "keys refreshed when an hour old", advance: time.Hour, token: func() string { return signJWT(t, k2, nil, claims()) }, n: 20, wantJWKS: 4},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			clock.Advance(st.advance)
			if st.rotate != nil {
				iss.setKeys(st.rotate...)
			}
			for i, err := range resolveConcurrently(a, st.n, st.token()) {
				if i == 0 {
					wantErrKind(t, err, st.err)
				} else if (err == nil) != (st.err == nil) {
					t.Fatalf("request %d: err = %v, want %v", i, err, st.err)
				}
			}
			if got := iss.jwksHits.Load(); got != st.wantJWKS {
				t.Fatalf("JWKS fetched %d times, want %d", got, st.wantJWKS)
			}
		})
	}
	if n := iss.discoveryHits.Load(); n != 1 {
		t.Errorf("discovery fetched %d times, want once (jwks_uri is cached)", n)
	}
}

func TestOIDCIssuerTrouble(t *testing.T) {
	k1 := newTestKey(t, "k1")

	t.Run("fallback to /.well-known/jwks.json", func(t *testing.T) {
		iss := newTestIssuer(t, k1)
		iss.mu.Lock()
		iss.noDiscovery = true
		iss.mu.Unlock()
		clock := newTestClock()
		a := newOIDCAuth(t, iss, clock, newFakeUserStore())
		if _, err := a.Resolve(requestWith("Bearer " + signJWT(t, k1, nil, claimsFor(iss, "auth0|erin", clock.Now())))); err != nil {
			t.Fatalf("Resolve: %v", err)
		}
		if iss.jwksHits.Load() != 1 {
			t.Fatalf("JWKS fetched %d times", iss.jwksHits.Load())
		}
	})

	t.Run("discovery names another issuer", func(t *testing.T) {
		iss := newTestIssuer(t, k1)
		iss.mu.Lock()
		iss.docIssuer = "https://evil.example.com/"
		iss.mu.Unlock()
		clock := newTestClock()
		a := newOIDCAuth(t, iss, clock, newFakeUserStore())
		_, err := a.Resolve(requestWith("Bearer " + signJWT(t, k1, nil, claimsFor(iss, "auth0|erin", clock.Now()))))
		wantErrKind(t, err, ErrUnauthenticated)
		if iss.jwksHits.Load() != 0 {
			t.Fatal("keys fetched although discovery named another issuer")
		}
	})

	t.Run("issuer down: no hammering, stale keys kept", func(t *testing.T) {
		iss := newTestIssuer(t, k1)
		clock := newTestClock()
		store := newFakeUserStore()
		a := newOIDCAuth(t, iss, clock, store)
		token := func() string { return signJWT(t, k1, nil, claimsFor(iss, "auth0|erin", clock.Now())) }

		iss.setDown(true)
		for i, err := range resolveConcurrently(a, 20, token()) {
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("request %d while the issuer is down: err = %v", i, err)
			}
		}
		discovery, jwks := iss.discoveryHits.Load(), iss.jwksHits.Load()
		if discovery+jwks != 2 { // one discovery attempt, one fallback attempt
			t.Fatalf("fetches while down: discovery %d, jwks %d; want one attempt", discovery, jwks)
		}

		iss.setDown(false)
		clock.Advance(11 * time.Second)
		if _, err := a.Resolve(requestWith("Bearer " + token())); err != nil {
			t.Fatalf("issuer back: %v", err)
		}

		// Keys an hour old are refreshed, but an unreachable issuer does not
		// lock everyone out: the cached key still verifies.
		iss.setDown(true)
		clock.Advance(2 * time.Hour)
		before := iss.jwksHits.Load()
		if _, err := a.Resolve(requestWith("Bearer " + token())); err != nil {
			t.Fatalf("stale key while the issuer is down: %v", err)
		}
		if iss.jwksHits.Load() != before+1 {
			t.Fatalf("stale keys were not refreshed")
		}
	})

	t.Run("store failure is not a 401", func(t *testing.T) {
		iss := newTestIssuer(t, k1)
		clock := newTestClock()
		store := newFakeUserStore()
		store.setErr(errors.New("database is down"))
		a := newOIDCAuth(t, iss, clock, store)
		_, err := a.Resolve(requestWith("Bearer " + signJWT(t, k1, nil, claimsFor(iss, "auth0|erin", clock.Now()))))
		if err == nil || errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrDisabled) {
			t.Fatalf("err = %v, want a non-auth error", err)
		}
	})
}

func TestOIDCEmailClaim(t *testing.T) {
	k1 := newTestKey(t, "k1")
	iss := newTestIssuer(t, k1)
	clock := newTestClock()
	store := newFakeUserStore()
	a := newTestAuth(t, Config{
		Mode: ModeOIDC, OIDCIssuer: iss.url(), OIDCAudience: testAudience,
		OIDCEmailClaim: "https://inboxd.example.com/email", HTTPClient: iss.srv.Client(),
	}, store, nil, clock)
	claims := with(claimsFor(iss, "auth0|frank", clock.Now()), map[string]any{
		"email":                            nil,
		"https://inboxd.example.com/email": "frank@example.com",
	})
	u, err := a.Resolve(requestWith("Bearer " + signJWT(t, k1, nil, claims)))
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "frank@example.com" {
		t.Fatalf("Email = %q, want the custom claim's value", u.Email)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	tests := []struct {
		tok  string
		want bool
	}{
		{"eyJhbGciOiJSUzI1NiJ9.e30.c2ln", true},
		{"ibx_abcdef", false},
		{"a.b.c", false}, // three parts, but the header is not JSON
		{"eyJhbGciOiJSUzI1NiJ9.e30", false},
		{"eyJhbGciOiJSUzI1NiJ9.e30.c2ln.x", false},
	}
	for _, tt := range tests {
		if got := looksLikeJWT(tt.tok); got != tt.want {
			t.Errorf("looksLikeJWT(%q) = %v, want %v", tt.tok, got, tt.want)
		}
	}
}

func TestJWKParsing(t *testing.T) {
	k := newTestKey(t, "k")
	n := base64.RawURLEncoding.EncodeToString(k.priv.N.Bytes())
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		j    jwk
		ok   bool
	}{
		{"rsa sig", jwk{Kty: "RSA", N: n, E: "AQAB"}, true},
		{"padded", jwk{Kty: "RSA", N: n + "==", E: "AQAB"}, true},
		{"EC", jwk{Kty: "EC", N: n, E: "AQAB"}, false},
		{"enc use", jwk{Kty: "RSA", Use: "enc", N: n, E: "AQAB"}, false},
		{"other alg", jwk{Kty: "RSA", Alg: "RS512", N: n, E: "AQAB"}, false},
		{"small modulus", jwk{Kty: "RSA", N: base64.RawURLEncoding.EncodeToString(small.N.Bytes()), E: "AQAB"}, false},
		{"even exponent", jwk{Kty: "RSA", N: n, E: "Ag"}, false},
		{"huge exponent", jwk{Kty: "RSA", N: n, E: "AQIDBAU"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.j.rsaKey()
			if (err == nil) != tt.ok {
				t.Fatalf("rsaKey err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
