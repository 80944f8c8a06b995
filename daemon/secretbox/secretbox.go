// Package secretbox owns the daemon's secret key and the encryption of secrets
// at rest (IMAP passwords, API keys of providers): AES-256-GCM under a 32-byte
// key kept in a file of mode 0600.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the size of the secret key in bytes (AES-256).
const KeySize = 32

// prefix marks values sealed by this package, and their format version.
const prefix = "v1:"

// ErrDecrypt: the ciphertext was not made with this key, or was altered.
var ErrDecrypt = errors.New("secretbox: cannot decrypt (wrong secret key or damaged value)")

// Box seals and opens secrets with one key.
type Box struct {
	aead cipher.AEAD
	key  [KeySize]byte
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	b := &Box{aead: aead}
	copy(b.key[:], key)
	return b, nil
}

// Seal encrypts plaintext. The result is "v1:" + base64(nonce || ciphertext).
// additional binds the ciphertext to its place (the KV key), so a value copied
// to another user's key does not decrypt.
func (b *Box) Seal(plaintext, additional string) string {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("secretbox: crypto/rand: %v", err))
	}
	out := b.aead.Seal(nonce, nonce, []byte(plaintext), []byte(additional))
	return prefix + base64.StdEncoding.EncodeToString(out)
}

// Open decrypts a value made by Seal with the same additional data.
func (b *Box) Open(sealed, additional string) (string, error) {
	raw, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return "", ErrDecrypt
	}
	data, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || len(data) < b.aead.NonceSize() {
		return "", ErrDecrypt
	}
	n := b.aead.NonceSize()
	pt, err := b.aead.Open(nil, data[:n], data[n:], []byte(additional))
	if err != nil {
		return "", ErrDecrypt
	}
	return string(pt), nil
}

// MAC returns an HMAC-SHA256 of msg under a key derived from the secret key for
// purpose, so that each use (session tokens, ...) has its own key.
func (b *Box) MAC(purpose string, msg []byte) []byte {
	k := hmac.New(sha256.New, b.key[:])
	k.Write([]byte("inboxd mac key: " + purpose))
	m := hmac.New(sha256.New, k.Sum(nil))
	m.Write(msg)
	return m.Sum(nil)
}

// LoadOrCreateKey reads the hex-encoded key at path. When the file does not
// exist it creates one with a fresh random key, mode 0600 (and its directory,
// mode 0700). A key file readable by group or others is refused.
func LoadOrCreateKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("secretbox: read secret key file %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secretbox: stat secret key file %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secretbox: secret key file %s has mode %04o; it must be 0600 (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: secret key file %s must hold %d hex-encoded bytes", path, KeySize)
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("secretbox: create directory for secret key file: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("secretbox: generate key: %w", err)
	}
	// Write a temporary file, then link it into place: link fails when the
	// path exists, so two processes starting at once agree on one key and
	// neither ever reads a half-written file.
	tmp, err := os.CreateTemp(dir, ".secret.key-*")
	if err != nil {
		return nil, fmt.Errorf("secretbox: create secret key file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("secretbox: chmod secret key file: %w", err)
	}
	if _, err := tmp.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("secretbox: write secret key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("secretbox: sync secret key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("secretbox: write secret key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKey(path)
		}
		return nil, fmt.Errorf("secretbox: install secret key file %s: %w", path, err)
	}
	return key, nil
}
