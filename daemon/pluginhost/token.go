package pluginhost

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inboxd/inboxd/daemon/userid"
)

// A capability token authorises the host-service requests of one tool call.
// The host mints it per call; it binds the user, the workflow instance, the
// plugin and an expiry (the call's deadline), is signed with HMAC-SHA256
// under a key drawn at random per Host (so it is worthless to any other
// process or after a restart), and is revoked when the call returns.
//
// Wire form: base64url(payload) "." base64url(mac), payload =
// version(1) | expiry unix ns(8) | serial(8) | len(1) user | len(2) instance | len(1) plugin.

const tokenVersion = 1

// capability is what a verified token grants.
type capability struct {
	user     userid.ID
	instance string
	plugin   string
	expiry   time.Time
	serial   uint64
}

// Reasons a token is refused (wrapped in PermissionDenied answers).
var (
	errTokenMissing  = errors.New("no capability token")
	errTokenForged   = errors.New("capability token malformed or not signed by this host")
	errTokenExpired  = errors.New("capability token expired")
	errTokenFinished = errors.New("capability token of a call that has returned")
	errTokenPlugin   = errors.New("capability token minted for another plugin")
)

// minter mints and checks tokens and keeps the set of calls in flight.
type minter struct {
	key    [32]byte
	serial atomic.Uint64
	now    func() time.Time

	mu   sync.Mutex
	live map[uint64]struct{}
}

func newMinter() *minter {
	m := &minter{now: time.Now, live: map[uint64]struct{}{}}
	if _, err := rand.Read(m.key[:]); err != nil {
		panic(fmt.Sprintf("pluginhost: crypto/rand: %v", err)) // never fails on Linux
	}
	return m
}

// mint returns a token for one call and a func that revokes it (call it
// when the call returns).
func (m *minter) mint(user userid.ID, instance, plugin string, expiry time.Time) (string, func()) {
	serial := m.serial.Add(1)
	tok := m.sign(capability{user: user, instance: instance, plugin: plugin, expiry: expiry, serial: serial})
	m.mu.Lock()
	m.live[serial] = struct{}{}
	m.mu.Unlock()
	return tok, func() {
		m.mu.Lock()
		delete(m.live, serial)
		m.mu.Unlock()
	}
}

// sign encodes and signs c (without registering it as live).
func (m *minter) sign(c capability) string {
	u := c.user.String()
	inst := c.instance
	if len(inst) > 0xffff {
		inst = inst[:0xffff]
	}
	p := make([]byte, 0, 1+8+8+1+len(u)+2+len(inst)+1+len(c.plugin))
	p = append(p, tokenVersion)
	p = binary.BigEndian.AppendUint64(p, uint64(c.expiry.UnixNano()))
	p = binary.BigEndian.AppendUint64(p, c.serial)
	p = append(p, byte(len(u)))
	p = append(p, u...)
	p = binary.BigEndian.AppendUint16(p, uint16(len(inst)))
	p = append(p, inst...)
	p = append(p, byte(len(c.plugin)))
	p = append(p, c.plugin...)
	mac := hmac.New(sha256.New, m.key[:])
	mac.Write(p)
	return base64.RawURLEncoding.EncodeToString(p) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// verify checks tok for a request arriving on plugin's host connection and
// returns what it grants.
func (m *minter) verify(tok, plugin string) (capability, error) {
	if tok == "" {
		return capability{}, errTokenMissing
	}
	b64p, b64mac, ok := strings.Cut(tok, ".")
	if !ok {
		return capability{}, errTokenForged
	}
	strict := base64.RawURLEncoding.Strict() // one encoding per token
	p, err1 := strict.DecodeString(b64p)
	got, err2 := strict.DecodeString(b64mac)
	if err1 != nil || err2 != nil {
		return capability{}, errTokenForged
	}
	mac := hmac.New(sha256.New, m.key[:])
	mac.Write(p)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return capability{}, errTokenForged
	}
	c, ok := decodeCapability(p)
	if !ok {
		return capability{}, errTokenForged
	}
	if c.plugin != plugin {
		return capability{}, errTokenPlugin
	}
	if !m.now().Before(c.expiry) {
		return capability{}, errTokenExpired
	}
	m.mu.Lock()
	_, live := m.live[c.serial]
	m.mu.Unlock()
	if !live {
		return capability{}, errTokenFinished
	}
	return c, nil
}

// decodeCapability parses a signed payload.
func decodeCapability(p []byte) (capability, bool) {
	var c capability
	if len(p) < 1+8+8+1 || p[0] != tokenVersion {
		return c, false
	}
	c.expiry = time.Unix(0, int64(binary.BigEndian.Uint64(p[1:9])))
	c.serial = binary.BigEndian.Uint64(p[9:17])
	p = p[17:]
	n := int(p[0])
	if len(p) < 1+n+2 {
		return c, false
	}
	user, err := userid.Parse(string(p[1 : 1+n]))
	if err != nil {
		return c, false
	}
	c.user = user
	p = p[1+n:]
	n = int(binary.BigEndian.Uint16(p))
	if len(p) < 2+n+1 {
		return c, false
	}
	c.instance = string(p[2 : 2+n])
	p = p[2+n:]
	n = int(p[0])
	if len(p) != 1+n {
		return c, false
	}
	c.plugin = string(p[1:])
	return c, true
}
