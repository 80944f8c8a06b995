package mail

import (
	"errors"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestMessageID(t *testing.T) {
	for _, tt := range []struct {
		mailbox string
		uid     imap.UID
		id      string
	}{
		{"INBOX", 42, "SU5CT1g:42"},
		{"[Gmail]/All Mail", 1, "W0dtYWlsXS9BbGwgTWFpbA:1"},
		{"Entwürfe", 4294967295, "RW50d8O8cmZl:4294967295"},
		{"a:b", 7, "YTpi:7"},
		{"??>", 3, "Pz8-:3"}, // base64url's '-' (standard base64 would use '+')
	} {
		if got := EncodeMessageID(tt.mailbox, tt.uid); got != tt.id {
			t.Errorf("EncodeMessageID(%q, %d) = %q, want %q", tt.mailbox, tt.uid, got, tt.id)
		}
		mb, uid, err := DecodeMessageID(tt.id)
		if err != nil || mb != tt.mailbox || uid != tt.uid {
			t.Errorf("DecodeMessageID(%q) = %q, %d, %v", tt.id, mb, uid, err)
		}
	}
}

func TestDecodeMessageIDStrict(t *testing.T) {
	for _, bad := range []string{
		"",
		"SU5CT1g",            // no colon
		":42",                // no mailbox
		"SU5CT1g:",           // no uid
		"SU5CT1g=:42",        // padding
		"SU5CT1h:42",         // non-canonical trailing bits
		"Pz8+:3",             // standard alphabet
		"SU5C T1g:42",        // space
		"SU5CT1g:042",        // leading zero
		"SU5CT1g:0",          // uid 0
		"SU5CT1g:+42",        // sign
		"SU5CT1g:-1",         // negative
		"SU5CT1g:4294967296", // > 32 bits
		"SU5CT1g:99999999999",
		"SU5CT1g:4:2",  // extra colon
		"SU5CT1g: 42",  // space
		"SU5CT1g:42\n", // trailing newline
		"DQo:1",        // "\r\n" mailbox
		"_w:1",         // invalid UTF-8 (0xff)
		"AA:1",         // NUL mailbox
	} {
		if mb, uid, err := DecodeMessageID(bad); err == nil {
			t.Errorf("DecodeMessageID(%q) = %q, %d, want an error", bad, mb, uid)
		} else if !errors.Is(err, ErrBadMessageID) {
			t.Errorf("DecodeMessageID(%q) error %v does not wrap ErrBadMessageID", bad, err)
		}
	}
}

func FuzzDecodeMessageID(f *testing.F) {
	for _, s := range []string{"SU5CT1g:42", "W0dtYWlsXS9BbGwgTWFpbA:1", "Pz8-:3", "SU5CT1g=:42", ":", "a:0", "YTpi:4294967295"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mb, uid, err := DecodeMessageID(s)
		if err != nil {
			return
		}
		// Strict: only the canonical encoding decodes.
		if again := EncodeMessageID(mb, uid); again != s {
			t.Fatalf("DecodeMessageID(%q) = %q, %d, which encodes as %q", s, mb, uid, again)
		}
		if uid == 0 || checkMailboxName(mb) != nil {
			t.Fatalf("DecodeMessageID(%q) accepted %q, %d", s, mb, uid)
		}
	})
}

func FuzzMessageIDRoundTrip(f *testing.F) {
	f.Add("INBOX", uint32(1))
	f.Add("[Gmail]/Sent Mail", uint32(4294967295))
	f.Fuzz(func(t *testing.T, mailbox string, uid uint32) {
		id := EncodeMessageID(mailbox, imap.UID(uid))
		mb, got, err := DecodeMessageID(id)
		valid := uid != 0 && checkMailboxName(mailbox) == nil
		if valid && (err != nil || mb != mailbox || got != imap.UID(uid)) {
			t.Fatalf("round trip of %q, %d: %q, %d, %v", mailbox, uid, mb, got, err)
		}
		if !valid && err == nil {
			t.Fatalf("invalid %q, %d decoded", mailbox, uid)
		}
	})
}
