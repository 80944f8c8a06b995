// Package userid owns the typed user identifier that every store function and
// every per-user key takes. An ID can only be made by parsing or generating a
// canonical UUID, so a zero or malformed user id never reaches a store.
package userid

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrZero is returned by stores given the zero ID: there is no "no user" path.
var ErrZero = errors.New("userid: zero user id")

// ID is a user's UUID. The zero value is invalid and refused by every store.
type ID struct {
	s string // canonical lowercase 36-character form; "" only for the zero ID
}

// defaultID is the user of auth modes none and password.
const defaultID = "12345678-1234-5678-9012-123456789012"

// Default returns the single user of auth modes none and password.
func Default() ID { return ID{s: defaultID} }

// New returns a random (version 4) ID.
func New() ID {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("userid: crypto/rand: %v", err)) // crypto/rand never fails on Linux
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fromBytes(b)
}

func fromBytes(b [16]byte) ID {
	h := hex.EncodeToString(b[:])
	return ID{s: h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]}
}

// Parse accepts a UUID in the 36-character hyphenated form, any case, and
// returns it in canonical lowercase form. The nil UUID is refused.
func Parse(s string) (ID, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return ID{}, fmt.Errorf("userid: %q is not a UUID", s)
	}
	compact := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	var b [16]byte
	if _, err := hex.Decode(b[:], []byte(compact)); err != nil {
		return ID{}, fmt.Errorf("userid: %q is not a UUID", s)
	}
	if b == [16]byte{} {
		return ID{}, fmt.Errorf("userid: the nil UUID is not a user")
	}
	return ID{s: strings.ToLower(s)}, nil
}

// MustParse is Parse for constants in tests and code; it panics on a bad UUID.
func MustParse(s string) ID {
	id, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return id
}

// String returns the canonical lowercase form ("" for the zero ID).
func (id ID) String() string { return id.s }

// IsZero reports whether id is the zero (invalid) ID.
func (id ID) IsZero() bool { return id.s == "" }

// Check returns ErrZero for the zero ID; stores call it first.
func (id ID) Check() error {
	if id.s == "" {
		return ErrZero
	}
	return nil
}

// KeyPrefix is the prefix of every KV key of this user: "user:{uuid}:".
func (id ID) KeyPrefix() string { return "user:" + id.s + ":" }

// Key builds the user's KV key "user:{uuid}:{suffix}". It is the only place
// user-scoped keys are made; it panics on the zero ID so that no user-less key
// can ever be written.
func (id ID) Key(suffix string) string {
	if id.s == "" {
		panic("userid: Key on the zero user id")
	}
	return "user:" + id.s + ":" + suffix
}

// MarshalText and UnmarshalText let IDs travel in JSON as strings.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.s), nil }

// UnmarshalText parses a UUID string.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
