package userid

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"12345678-1234-5678-9012-123456789012", "12345678-1234-5678-9012-123456789012", true},
		{"ABCDEF01-2345-6789-ABCD-EF0123456789", "abcdef01-2345-6789-abcd-ef0123456789", true},
		{"00000000-0000-0000-0000-000000000000", "", false},
		{"", "", false},
		{"12345678123456789012123456789012", "", false},
		{"12345678-1234-5678-9012-12345678901g", "", false},
		{"12345678-1234-5678-9012-1234567890123", "", false},
		{"../../../../etc/passwd-aaaaaaaaaaaaaaa", "", false},
	}
	for _, tc := range cases {
		got, err := Parse(tc.in)
		if (err == nil) != tc.ok || got.String() != tc.want {
			t.Errorf("Parse(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestNewAndKeys(t *testing.T) {
	a, b := New(), New()
	if a == b || a.IsZero() {
		t.Fatal("New gave equal or zero ids")
	}
	if _, err := Parse(a.String()); err != nil {
		t.Fatalf("New gave an unparsable id %q: %v", a, err)
	}
	if got := a.Key("imap_server"); got != "user:"+a.String()+":imap_server" || !strings.HasPrefix(got, a.KeyPrefix()) {
		t.Errorf("Key = %q", got)
	}
	var zero ID
	if zero.Check() != ErrZero {
		t.Error("zero id passes Check")
	}
	defer func() {
		if recover() == nil {
			t.Error("Key on the zero id did not panic")
		}
	}()
	zero.Key("imap_server")
}
