package pluginhost

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCapabilityTokens(t *testing.T) {
	m := newMinter()
	now := time.Now()
	m.now = func() time.Time { return now }
	tok, revoke := m.mint(alice, "inst-1", "imap", now.Add(time.Minute))

	c, err := m.verify(tok, "imap")
	if err != nil || c.user != alice || c.instance != "inst-1" || c.plugin != "imap" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	payload, mac, _ := strings.Cut(tok, ".")
	other := newMinter()
	otherTok, _ := other.mint(bob, "inst-1", "imap", now.Add(time.Minute))
	cases := []struct {
		name, tok, plugin string
		want              error
	}{
		{"other plugin", tok, "tone", errTokenPlugin},
		{"empty", "", "imap", errTokenMissing},
		{"garbage", "not-a-token", "imap", errTokenForged},
		{"bad base64", "!!!.???", "imap", errTokenForged},
		{"payload of another token", strings.Split(otherTok, ".")[0] + "." + mac, "imap", errTokenForged},
		{"another host's key", otherTok, "imap", errTokenForged},
		{"truncated mac", payload + "." + mac[:10], "imap", errTokenForged},
	}
	for _, tc := range cases {
		if _, err := m.verify(tc.tok, tc.plugin); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Every single-character change of the token is refused.
	for i := range tok {
		b := []byte(tok)
		b[i] ^= 0x01
		if _, err := m.verify(string(b), "imap"); err == nil {
			t.Fatalf("token changed at %d accepted", i)
		}
	}
	now = now.Add(2 * time.Minute)
	if _, err := m.verify(tok, "imap"); !errors.Is(err, errTokenExpired) {
		t.Errorf("expired: %v", err)
	}
	now = now.Add(-2 * time.Minute)
	revoke()
	if _, err := m.verify(tok, "imap"); !errors.Is(err, errTokenFinished) {
		t.Errorf("after the call: %v", err)
	}
	if len(m.live) != 0 {
		t.Errorf("live set not emptied: %d", len(m.live))
	}
}

func TestLineWriter(t *testing.T) {
	logs := &syncBuffer{}
	w := &lineWriter{l: newTestLogger(logs), msg: "plugin output", stream: "stdout"}
	_, _ = w.Write([]byte("one\ntw"))
	_, _ = w.Write([]byte("o\r\n\nthree"))
	got := logs.String()
	if strings.Count(got, "plugin output") != 2 || !strings.Contains(got, "line=one") || !strings.Contains(got, "line=two") || strings.Contains(got, "three") {
		t.Errorf("logged:\n%s", got)
	}
	_, _ = w.Write([]byte(strings.Repeat("x", maxLine+10)))
	if n := strings.Count(logs.String(), "plugin output"); n != 3 {
		t.Errorf("a long line gave %d records", n)
	}
}
