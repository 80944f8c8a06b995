// Package settings owns each user's AppSettings: IMAP account, LLM and
// embedding choices, timezone. They live in the KV under the user's own keys
// ("user:{uuid}:imap_server", ...), one key per field; secrets are sealed with
// AES-256-GCM bound to their key, so no plaintext secret is ever stored and a
// ciphertext copied to another user's key does not decrypt.
package settings

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Mask is what GET shows for a secret that is set, and what PUT ignores.
const Mask = "*****"

// Settings is one user's AppSettings, secrets in plaintext. Only this package
// and the code that needs a secret (the IMAP layer, the LLM client) see it;
// the API shows View instead.
type Settings struct {
	IMAPServer           string
	IMAPPort             int
	IMAPSecurity         string
	IMAPUsername         string
	IMAPPassword         string
	EmbeddingModel       string
	LLMBaseURL           string
	LLMModel             string
	LLMAPIKey            string
	EmbeddingAPIKey      string
	Timezone             string
	DraftCreationEnabled bool
}

// IMAPAccount is the account the settings describe, with defaults filled in
// (port 993 for tls, 143 otherwise; security tls).
func (s Settings) IMAPAccount() mail.Account {
	sec := mail.Security(s.IMAPSecurity)
	if sec == "" {
		sec = "tls"
	}
	port := s.IMAPPort
	if port == 0 {
		port = 993
		if sec != "tls" {
			port = 143
		}
	}
	return mail.Account{Server: s.IMAPServer, Port: port, Security: sec, Username: s.IMAPUsername, Password: s.IMAPPassword}
}

// IMAPComplete reports whether the IMAP account can be used.
func (s Settings) IMAPComplete() bool {
	return s.IMAPServer != "" && s.IMAPUsername != "" && s.IMAPPassword != ""
}

// field is one row of the settings table: its JSON name (also the KV key
// suffix), whether it is a secret, how it is validated and normalised, and
// where it lives in Settings.
type field struct {
	name   string
	secret bool
	kind   kind
	check  func(string) error
	ptr    func(*Settings) any // *string, *int or *bool
}

type kind int

const (
	kindString kind = iota
	kindInt
	kindBool
)

func fields() []field {
	return []field{
		{name: "imap_server", check: checkHost, ptr: func(s *Settings) any { return &s.IMAPServer }},
		{name: "imap_port", kind: kindInt, check: checkPort, ptr: func(s *Settings) any { return &s.IMAPPort }},
		{name: "imap_security", check: oneOf("tls", "starttls", "none"), ptr: func(s *Settings) any { return &s.IMAPSecurity }},
		{name: "imap_username", check: maxLen(320), ptr: func(s *Settings) any { return &s.IMAPUsername }},
		{name: "imap_password", secret: true, check: maxLen(4096), ptr: func(s *Settings) any { return &s.IMAPPassword }},
		{name: "embedding_model", check: checkModelName, ptr: func(s *Settings) any { return &s.EmbeddingModel }},
		{name: "llm_base_url", check: checkURL, ptr: func(s *Settings) any { return &s.LLMBaseURL }},
		{name: "llm_model", check: checkModelName, ptr: func(s *Settings) any { return &s.LLMModel }},
		{name: "llm_api_key", secret: true, check: maxLen(4096), ptr: func(s *Settings) any { return &s.LLMAPIKey }},
		{name: "embedding_api_key", secret: true, check: maxLen(4096), ptr: func(s *Settings) any { return &s.EmbeddingAPIKey }},
		{name: "timezone", check: checkTimezone, ptr: func(s *Settings) any { return &s.Timezone }},
		{name: "draft_creation_enabled", kind: kindBool, ptr: func(s *Settings) any { return &s.DraftCreationEnabled }},
	}
}

// FieldNames lists the JSON names of all settings, which are also their KV key suffixes.
func FieldNames() []string {
	var out []string
	for _, f := range fields() {
		out = append(out, f.name)
	}
	return out
}

// ValidationError names the field that was refused.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return "settings: " + e.Field + ": " + e.Message }

// Store reads and writes settings in the KV.
type Store struct {
	kv  kv.Store
	box *secretbox.Box
}

// NewStore returns a Store over a KV backend, sealing secrets with box.
func NewStore(store kv.Store, box *secretbox.Box) *Store {
	return &Store{kv: store, box: box}
}

// Get returns the user's settings with secrets decrypted.
func (st *Store) Get(ctx context.Context, id userid.ID) (Settings, error) {
	if err := id.Check(); err != nil {
		return Settings{}, err
	}
	fs := fields()
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = id.Key(f.name)
	}
	vals, err := st.kv.MGet(ctx, keys...)
	if err != nil {
		return Settings{}, fmt.Errorf("settings: read %s: %w", id, err)
	}
	var s Settings
	for i, f := range fs {
		v, ok := vals[keys[i]]
		if !ok {
			continue
		}
		if f.secret {
			if v, err = st.box.Open(v, keys[i]); err != nil {
				return Settings{}, fmt.Errorf("settings: %s of %s: %w", f.name, id, err)
			}
		}
		if err := assign(f, &s, v); err != nil {
			return Settings{}, fmt.Errorf("settings: stored %s of %s: %w", f.name, id, err)
		}
	}
	return s, nil
}

func assign(f field, s *Settings, v string) error {
	switch p := f.ptr(s).(type) {
	case *string:
		*p = v
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		*p = b
	}
	return nil
}

// View is the settings as the API shows them: every field present, secrets
// shown as Mask when set and "" when not, never their value.
func View(s Settings) map[string]any {
	out := make(map[string]any, 12)
	for _, f := range fields() {
		switch p := f.ptr(&s).(type) {
		case *string:
			switch {
			case f.secret && *p != "":
				out[f.name] = Mask
			default:
				out[f.name] = *p
			}
		case *int:
			if *p == 0 {
				out[f.name] = nil
			} else {
				out[f.name] = *p
			}
		case *bool:
			out[f.name] = *p
		}
	}
	return out
}

// Patch is a partial update decoded from JSON: field name to new value.
// A value of null or "" clears the field; a secret given as Mask is ignored.
type Patch map[string]json.RawMessage

// DecodePatch parses a JSON object into a Patch, refusing anything else.
func DecodePatch(body []byte) (Patch, error) {
	var p Patch
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&p); err != nil {
		return nil, &ValidationError{Field: "body", Message: "want a JSON object of settings: " + err.Error()}
	}
	if p == nil {
		return nil, &ValidationError{Field: "body", Message: "want a JSON object of settings"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &ValidationError{Field: "body", Message: "trailing data after the JSON object"}
	}
	return p, nil
}

// change is one validated field update: value "" with clear set deletes it.
type change struct {
	f     field
	value string
	clear bool
}

// validate checks every field of the patch and returns the changes to make.
// It stops at the first bad field (in name order, so errors are stable).
func validate(p Patch) ([]change, error) {
	byName := map[string]field{}
	for _, f := range fields() {
		byName[f.name] = f
	}
	names := make([]string, 0, len(p))
	for n := range p {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []change
	for _, n := range names {
		f, ok := byName[n]
		if !ok {
			return nil, &ValidationError{Field: n, Message: "unknown setting"}
		}
		c, skip, err := parseValue(f, p[n])
		if err != nil {
			return nil, &ValidationError{Field: n, Message: err.Error()}
		}
		if !skip {
			out = append(out, c)
		}
	}
	return out, nil
}

func parseValue(f field, raw json.RawMessage) (c change, skip bool, err error) {
	c.f = f
	if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
		c.clear = true
		return c, false, nil
	}
	switch f.kind {
	case kindString:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return c, false, errors.New("must be a string")
		}
		if f.secret && s == Mask {
			return c, true, nil
		}
		if !f.secret {
			s = strings.TrimSpace(s)
		}
		if s == "" {
			c.clear = true
			return c, false, nil
		}
		if f.check != nil {
			if err := f.check(s); err != nil {
				return c, false, err
			}
		}
		c.value = s
	case kindInt:
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return c, false, errors.New("must be a number")
		}
		switch v := v.(type) {
		case json.Number:
			n = v
		case string:
			if v == "" {
				c.clear = true
				return c, false, nil
			}
			n = json.Number(v)
		default:
			return c, false, errors.New("must be a number")
		}
		i, err := strconv.Atoi(n.String())
		if err != nil {
			return c, false, errors.New("must be a whole number")
		}
		if err := f.check(strconv.Itoa(i)); err != nil {
			return c, false, err
		}
		c.value = strconv.Itoa(i)
	case kindBool:
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return c, false, errors.New("must be true or false")
		}
		c.value = strconv.FormatBool(b)
	}
	return c, false, nil
}

// Apply validates p and returns s with the changes applied, without storing
// anything: test-imap uses it to try posted settings over stored ones.
func Apply(s Settings, p Patch) (Settings, error) {
	changes, err := validate(p)
	if err != nil {
		return Settings{}, err
	}
	for _, c := range changes {
		if c.clear {
			c.value = zeroText(c.f)
		}
		if err := assign(c.f, &s, c.value); err != nil {
			return Settings{}, &ValidationError{Field: c.f.name, Message: err.Error()}
		}
	}
	return s, nil
}

func zeroText(f field) string {
	switch f.kind {
	case kindInt:
		return "0"
	case kindBool:
		return "false"
	}
	return ""
}

// Update validates the patch as a whole, then writes the changed fields of
// this user only. Nothing is written when any field is refused.
func (st *Store) Update(ctx context.Context, id userid.ID, p Patch) error {
	if err := id.Check(); err != nil {
		return err
	}
	changes, err := validate(p)
	if err != nil {
		return err
	}
	set := map[string]string{}
	var del []string
	for _, c := range changes {
		key := id.Key(c.f.name)
		switch {
		case c.clear:
			del = append(del, key)
		case c.f.secret:
			set[key] = st.box.Seal(c.value, key)
		default:
			set[key] = c.value
		}
	}
	if len(set) > 0 {
		if err := st.kv.SetMany(ctx, set); err != nil {
			return fmt.Errorf("settings: write %s: %w", id, err)
		}
	}
	if len(del) > 0 {
		if err := st.kv.Delete(ctx, del...); err != nil {
			return fmt.Errorf("settings: clear %s: %w", id, err)
		}
	}
	return nil
}

func oneOf(allowed ...string) func(string) error {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("must be one of %s", strings.Join(allowed, ", "))
	}
}

func maxLen(n int) func(string) error {
	return func(v string) error {
		if len(v) > n {
			return fmt.Errorf("longer than %d bytes", n)
		}
		return nil
	}
}

func checkPort(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return errors.New("must be a port number 1-65535")
	}
	return nil
}

// checkHost accepts a DNS name or an IP address, without scheme, port or path.
func checkHost(v string) error {
	if len(v) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	if net.ParseIP(v) != nil {
		return nil
	}
	for _, label := range strings.Split(v, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("must be a host name like imap.example.com (no scheme, port or path)")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return errors.New("must be a host name like imap.example.com (no scheme, port or path)")
			}
		}
	}
	return nil
}

func checkURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an http:// or https:// URL")
	}
	return nil
}

func checkTimezone(v string) error {
	if v == "Local" {
		return errors.New("must be an IANA time zone name like Europe/Amsterdam")
	}
	if _, err := time.LoadLocation(v); err != nil {
		return errors.New("must be an IANA time zone name like Europe/Amsterdam")
	}
	return nil
}

func checkModelName(v string) error {
	if len(v) > 200 {
		return errors.New("longer than 200 characters")
	}
	for _, r := range v {
		if r < 0x21 || r == 0x7f {
			return errors.New("must not contain spaces or control characters")
		}
	}
	return nil
}
