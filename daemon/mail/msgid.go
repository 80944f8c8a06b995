package mail

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
)

// MaxMailboxNameLen bounds the mailbox names EncodeMessageID and
// DecodeMessageID accept, in bytes.
const MaxMailboxNameLen = 1024

// ErrBadMessageID is wrapped by every error DecodeMessageID returns.
var ErrBadMessageID = errors.New("mail: malformed message id")

// EncodeMessageID returns the contextual id of a message: the mailbox name
// in unpadded base64url (RFC 4648 section 5), a colon and the UID in decimal,
// e.g. "SU5CT1g:42" for INBOX UID 42. The id is what tools and the API use
// to name one message; it is only meaningful together with the mailbox's
// UIDVALIDITY, which it does not carry.
func EncodeMessageID(mailbox string, uid imap.UID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(mailbox)) + ":" + strconv.FormatUint(uint64(uid), 10)
}

// DecodeMessageID parses an id made by EncodeMessageID. It is strict: it
// accepts exactly the canonical form EncodeMessageID produces (no padding,
// no standard-alphabet characters, no whitespace, no sign or leading zeros
// in the UID), a non-zero 32-bit UID, and a mailbox name that is non-empty,
// valid UTF-8, free of control characters and at most MaxMailboxNameLen
// bytes. Errors wrap ErrBadMessageID.
func DecodeMessageID(s string) (mailbox string, uid imap.UID, err error) {
	enc, num, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("%w: missing ':' between mailbox and UID", ErrBadMessageID)
	}
	if enc == "" {
		return "", 0, fmt.Errorf("%w: empty mailbox", ErrBadMessageID)
	}
	if len(enc) > base64.RawURLEncoding.EncodedLen(MaxMailboxNameLen) {
		return "", 0, fmt.Errorf("%w: mailbox name too long", ErrBadMessageID)
	}
	name, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil {
		return "", 0, fmt.Errorf("%w: mailbox is not unpadded base64url", ErrBadMessageID)
	}
	// Strict rejects non-zero trailing bits; re-encoding also rules out
	// anything else that is not the canonical form.
	if base64.RawURLEncoding.EncodeToString(name) != enc {
		return "", 0, fmt.Errorf("%w: mailbox is not canonical base64url", ErrBadMessageID)
	}
	if err := checkMailboxName(string(name)); err != nil {
		return "", 0, fmt.Errorf("%w: %v", ErrBadMessageID, err)
	}
	if num == "" || len(num) > 10 || num[0] == '0' {
		return "", 0, fmt.Errorf("%w: UID must be a decimal number from 1 to 4294967295", ErrBadMessageID)
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return "", 0, fmt.Errorf("%w: UID must be a decimal number from 1 to 4294967295", ErrBadMessageID)
		}
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("%w: UID must be a decimal number from 1 to 4294967295", ErrBadMessageID)
	}
	return string(name), imap.UID(n), nil
}

// checkMailboxName rejects names no IMAP server uses and that could smuggle
// protocol syntax: empty, over-long, invalid UTF-8 or with control characters.
func checkMailboxName(name string) error {
	switch {
	case name == "":
		return errors.New("empty mailbox")
	case len(name) > MaxMailboxNameLen:
		return errors.New("mailbox name too long")
	case !utf8.ValidString(name):
		return errors.New("mailbox name is not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("mailbox name contains control characters")
		}
	}
	return nil
}
