package api_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func testMessage(i int) []byte {
	return []byte(fmt.Sprintf("From: sender%d@example.com\r\nTo: alice@example.com\r\nSubject: hello %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nbody %d\r\n", i, i, i, i))
}

// imapTarget is an IMAP server the API's test-imap is pointed at.
type imapTarget struct {
	name    string
	host    string
	port    int
	deliver func(t *testing.T, raw []byte)
}

func imapTargets(t *testing.T) []imapTarget {
	mem := testsvc.MemIMAP(t, map[string]string{"alice": "alice-imap-secret"})
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-imap-secret"})
	return []imapTarget{
		{"memserver", mem.Host, mem.Port, func(t *testing.T, raw []byte) { mem.Deliver(t, "alice", raw) }},
		{"dovecot", dove.Host, dove.Port, func(t *testing.T, raw []byte) { dove.Deliver(t, "alice", raw) }},
	}
}

func TestTestIMAP(t *testing.T) {
	for _, target := range imapTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
			_, key := e.newUser(t, "alice@example.com", false)
			for i := range 2 {
				target.deliver(t, testMessage(i))
			}
			post := func(body string) (int, map[string]any, string) {
				code, got := e.do(t, request{method: "POST", path: "/api/v1/settings/test-imap", bearer: key, body: body})
				return code, got, fmt.Sprint(got)
			}
			posted := fmt.Sprintf(`{"imap_server":%q,"imap_port":%d,"imap_security":"none","imap_username":"alice","imap_password":"alice-imap-secret"}`, target.host, target.port)

			code, got, text := post(posted)
			if code != 200 || got["ok"] != true || got["mailbox_count"] != 2.0 {
				t.Fatalf("posted settings: %d %s", code, text)
			}
			// Testing does not save.
			if keys := allKeys(t, e.kv); len(keys) != 0 {
				t.Errorf("test-imap stored settings: %v", keys)
			}

			// Wrong password: class auth, password not echoed.
			_, got, text = post(strings.Replace(posted, "alice-imap-secret", "wrong-secret-123", 1))
			if got["ok"] != false || errClass(got) != "auth" || strings.Contains(text, "wrong-secret-123") {
				t.Errorf("wrong password: %s", text)
			}

			// Nothing listening: class connect.
			_, got, text = post(strings.Replace(posted, strconv.Itoa(target.port), strconv.Itoa(testsvc.FreePort(t)), 1))
			if got["ok"] != false || errClass(got) != "connect" {
				t.Errorf("closed port: %s", text)
			}

			// Empty body: the stored settings; the mask keeps the stored password.
			if code, _ := e.do(t, request{method: "PUT", path: "/api/v1/settings", bearer: key, body: posted}); code != 200 {
				t.Fatal("PUT failed")
			}
			target.deliver(t, testMessage(3))
			if _, got, text = post(""); got["ok"] != true || got["mailbox_count"] != 3.0 {
				t.Errorf("stored settings: %s", text)
			}
			if _, got, text = post(`{"imap_password":"*****","imap_username":"alice"}`); got["ok"] != true {
				t.Errorf("stored password under the mask: %s", text)
			}
			// A bad posted field is a 400 naming it, like PUT; so is a missing one.
			if code, got, _ = post(`{"imap_port": 99999}`); code != 400 {
				t.Errorf("bad port: %d %v", code, got)
			}
			if code, got, _ = post(`{"imap_server": null}`); code != 400 || fmt.Sprint(got["error"]) == "" || !strings.Contains(fmt.Sprint(got["error"]), "imap_server") {
				t.Errorf("missing server: %d %v", code, got)
			}
			if code, got, _ = post(`{"imap_password": ""}`); code != 400 || !strings.Contains(fmt.Sprint(got["error"]), "imap_password") {
				t.Errorf("missing password: %d %v", code, got)
			}
		})
	}
}

func errClass(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	s, _ := e["class"].(string)
	return s
}
