package secretbox

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func newBox(t *testing.T) *Box {
	t.Helper()
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealOpen(t *testing.T) {
	b := newBox(t)
	sealed := b.Seal("p@ssw0rd", "user:a:imap_password")
	if strings.Contains(sealed, "p@ssw0rd") || !strings.HasPrefix(sealed, "v1:") {
		t.Fatalf("sealed = %q", sealed)
	}
	if sealed == b.Seal("p@ssw0rd", "user:a:imap_password") {
		t.Error("two seals of one plaintext are equal: nonce reused")
	}
	got, err := b.Open(sealed, "user:a:imap_password")
	if err != nil || got != "p@ssw0rd" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Bound to its key: another user's key does not open it.
	if _, err := b.Open(sealed, "user:b:imap_password"); err != ErrDecrypt {
		t.Errorf("open under another key: %v, want ErrDecrypt", err)
	}
	if _, err := newBox(t).Open(sealed, "user:a:imap_password"); err != ErrDecrypt {
		t.Errorf("open with another secret key: %v, want ErrDecrypt", err)
	}
	for _, bad := range []string{"", "plaintext", "v1:", "v1:!!", "v1:AAAA"} {
		if _, err := b.Open(bad, "k"); err != ErrDecrypt {
			t.Errorf("Open(%q) = %v, want ErrDecrypt", bad, err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "secret.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new key file mode %04o, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || string(k1) != string(k2) {
		t.Fatalf("reload gave another key (%v)", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("world-readable key file: err = %v, want a message naming 0600", err)
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("not hex"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(bad); err == nil {
		t.Error("garbage key file accepted")
	}
}

func TestKeyFileRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.key")
	keys := make([][]byte, 16)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if string(k) != string(keys[0]) {
			t.Fatal("concurrent first starts made different keys")
		}
	}
}
