package api_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/inboxd/inboxd/daemon/auth"
)

// BenchmarkGetSettings measures GET /api/v1/settings through the full HTTP
// stack (loopback TCP, apikey auth, router, metrics, settings decryption) on
// each KV backend.
func BenchmarkGetSettings(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			e := newEnv(b, be, auth.Config{Mode: "apikey"})
			_, key := e.newUser(b, "alice@example.com", false)
			if code, _ := e.do(b, request{method: "PUT", path: "/api/v1/settings", bearer: key, body: `{
				"imap_server":"imap.example.com","imap_port":993,"imap_security":"tls","imap_username":"alice",
				"imap_password":"secret","llm_api_key":"sk-test","timezone":"Europe/Amsterdam"}`}); code != 200 {
				b.Fatalf("PUT: %d", code)
			}
			client := e.srv.Client()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/settings", nil)
					req.Header.Set("Authorization", "Bearer "+key)
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}
