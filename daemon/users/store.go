package users

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

// ErrInvalidEmail: an email without a local part, an @ and a domain.
var ErrInvalidEmail = errors.New("users: invalid email")

// APIKeyPrefix starts every API key, so keys are recognisable (in logs that
// must redact them, in secret scanners).
const APIKeyPrefix = "inboxd_"

// apiKeyDisplayLen is how much of a key is kept for display: the fixed
// prefix and the first 8 random characters (48 of its 256 bits).
const apiKeyDisplayLen = len(APIKeyPrefix) + 8

// OIDCPlaceholderDomain is the domain of the email given to an OIDC user
// whose token carries no usable email, or an email another account holds.
const OIDCPlaceholderDomain = "oidc.invalid"

// APIKey describes a stored key; the key itself and its hash never leave the store.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Prefix     string    `json:"prefix"` // "inboxd_" and the key's first 8 characters
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"` // zero if never used
}

// Store keeps users and API keys in the SQL database.
type Store struct {
	db *sqldb.DB
}

// NewStore returns the store on db (migrated by sqldb.Migrate).
func NewStore(db *sqldb.DB) *Store {
	return &Store{db: db}
}

const userColumns = "id, email, display_name, auth_subject, admin, disabled, created_at"

// now is the creation time stored for new rows: UTC, at the microsecond
// precision both dialects keep, so a value reads back exactly.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// normEmail lower-cases and trims email and checks it has the shape a@b.
func normEmail(email string) (string, error) {
	e := strings.ToLower(strings.TrimSpace(email))
	at := strings.LastIndexByte(e, '@')
	if at <= 0 || at == len(e)-1 || strings.ContainsAny(e, " \t\r\n") {
		return "", fmt.Errorf("%w: %q", ErrInvalidEmail, email)
	}
	return e, nil
}

// nullable maps "" to NULL, so that many users can have no auth subject
// under the UNIQUE constraint.
func nullable(s string) sql.NullString {
	return sql.NullString{String: s, Valid: s != ""}
}

type scanner interface{ Scan(dest ...any) error }

func scanUser(row scanner) (User, error) {
	var (
		u       User
		id      string
		subject sql.NullString
	)
	if err := row.Scan(&id, &u.Email, &u.DisplayName, &subject, &u.Admin, &u.Disabled, &u.CreatedAt); err != nil {
		return User{}, err
	}
	uid, err := userid.Parse(id)
	if err != nil {
		return User{}, fmt.Errorf("users: stored id: %w", err)
	}
	u.ID, u.AuthSubject, u.CreatedAt = uid, subject.String, u.CreatedAt.UTC()
	return u, nil
}

// one runs a query for at most one user; no row is ErrNotFound.
func (s *Store) one(ctx context.Context, what, query string, args ...any) (User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, s.db.Rebind(query), args...))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("users: %s: %w", what, ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("users: %s: %w", what, err)
	}
	return u, nil
}

// Create adds a user with a new random id. The email is trimmed and
// lower-cased; a taken email or auth subject is ErrExists.
func (s *Store) Create(ctx context.Context, nu NewUser) (User, error) {
	email, err := normEmail(nu.Email)
	if err != nil {
		return User{}, err
	}
	u := User{
		ID:          userid.New(),
		Email:       email,
		DisplayName: strings.TrimSpace(nu.DisplayName),
		AuthSubject: strings.TrimSpace(nu.AuthSubject),
		Admin:       nu.Admin,
		CreatedAt:   now(),
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind("INSERT INTO users ("+userColumns+") VALUES (?, ?, ?, ?, ?, ?, ?)"),
		u.ID.String(), u.Email, u.DisplayName, nullable(u.AuthSubject), u.Admin, false, u.CreatedAt)
	if s.db.IsUniqueViolation(err) {
		return User{}, fmt.Errorf("users: create %s: %w", email, ErrExists)
	}
	if err != nil {
		return User{}, fmt.Errorf("users: create %s: %w", email, err)
	}
	return u, nil
}

// Get returns the user with id, ErrNotFound, or userid.ErrZero.
func (s *Store) Get(ctx context.Context, id userid.ID) (User, error) {
	if err := id.Check(); err != nil {
		return User{}, err
	}
	return s.one(ctx, "get "+id.String(), "SELECT "+userColumns+" FROM users WHERE id = ?", id.String())
}

// ByEmail returns the user with email (compared trimmed and lower-cased).
func (s *Store) ByEmail(ctx context.Context, email string) (User, error) {
	e := strings.ToLower(strings.TrimSpace(email))
	if e == "" {
		return User{}, fmt.Errorf("users: by email: %w", ErrNotFound)
	}
	return s.one(ctx, "by email", "SELECT "+userColumns+" FROM users WHERE email = ?", e)
}

// BySubject returns the user with OIDC subject sub.
func (s *Store) BySubject(ctx context.Context, sub string) (User, error) {
	sub = strings.TrimSpace(sub)
	if sub == "" {
		return User{}, fmt.Errorf("users: by subject: %w", ErrNotFound)
	}
	return s.one(ctx, "by subject", "SELECT "+userColumns+" FROM users WHERE auth_subject = ?", sub)
}

// Lookup finds a user by id (a UUID) or else by email, as the CLI's
// EMAIL|ID arguments need.
func (s *Store) Lookup(ctx context.Context, emailOrID string) (User, error) {
	if id, err := userid.Parse(strings.TrimSpace(emailOrID)); err == nil {
		return s.Get(ctx, id)
	}
	return s.ByEmail(ctx, emailOrID)
}

// List returns every user, oldest first.
func (s *Store) List(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+userColumns+" FROM users ORDER BY created_at, id")
	if err != nil {
		return nil, fmt.Errorf("users: list: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("users: list: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("users: list: %w", err)
	}
	return out, nil
}

// SetDisabled disables or re-enables a user. A disabled user keeps their
// data; the auth layer refuses their requests and the poller skips them.
func (s *Store) SetDisabled(ctx context.Context, id userid.ID, disabled bool) error {
	return s.setFlag(ctx, id, "disabled", disabled)
}

// SetAdmin grants or revokes admin rights.
func (s *Store) SetAdmin(ctx context.Context, id userid.ID, admin bool) error {
	return s.setFlag(ctx, id, "admin", admin)
}

// setFlag updates one boolean column; column is one of two constants above.
func (s *Store) setFlag(ctx context.Context, id userid.ID, column string, v bool) error {
	if err := id.Check(); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind("UPDATE users SET "+column+" = ? WHERE id = ?"), v, id.String())
	if err != nil {
		return fmt.Errorf("users: set %s of %s: %w", column, id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("users: set %s of %s: %w", column, id, err)
	}
	if n == 0 {
		return fmt.Errorf("users: set %s of %s: %w", column, id, ErrNotFound)
	}
	return nil
}

// insertIfAbsent inserts u unless any unique column (id, email, auth
// subject) is taken, and reports whether it did. Concurrent callers never
// fail: the losers insert nothing.
func (s *Store) insertIfAbsent(ctx context.Context, u User) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.db.Rebind("INSERT INTO users ("+userColumns+") VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
		u.ID.String(), u.Email, u.DisplayName, nullable(u.AuthSubject), u.Admin, u.Disabled, u.CreatedAt)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// EnsureDefault returns the default user of auth modes none and password
// (userid.Default(), DefaultEmail), creating it on first use. Any number of
// goroutines and processes may call it at once: all get the same user.
func (s *Store) EnsureDefault(ctx context.Context) (User, error) {
	id := userid.Default()
	if _, err := s.insertIfAbsent(ctx, User{ID: id, Email: DefaultEmail, DisplayName: "Default user", CreatedAt: now()}); err != nil {
		return User{}, fmt.Errorf("users: ensure default: %w", err)
	}
	u, err := s.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		// The insert did nothing yet the id is absent: another user holds DefaultEmail.
		return User{}, fmt.Errorf("users: ensure default: %s belongs to another user: %w", DefaultEmail, ErrExists)
	}
	return u, err
}

// FindOrCreateBySubject returns the user with OIDC subject sub, creating it
// with email on first login. Concurrent first logins of one subject all get
// the same user.
//
// An existing local account with the same email is never taken over: the
// email in a token is not proof of owning that account (providers differ in
// how they verify it), so linking is an admin's decision. The new user then
// gets the placeholder email "oidc-{sha256(sub)[:32 hex]}@oidc.invalid",
// which is unique per subject; so does a user whose token has no valid email.
func (s *Store) FindOrCreateBySubject(ctx context.Context, sub, email string) (User, error) {
	sub = strings.TrimSpace(sub)
	if sub == "" {
		return User{}, errors.New("users: find or create by subject: empty subject")
	}
	if u, err := s.BySubject(ctx, sub); !errors.Is(err, ErrNotFound) {
		return u, err // found, or a database error
	}
	placeholder := oidcPlaceholderEmail(sub)
	candidates := []string{placeholder}
	if e, err := normEmail(email); err == nil && e != placeholder {
		candidates = []string{e, placeholder}
	}
	for _, e := range candidates {
		inserted, err := s.insertIfAbsent(ctx, User{ID: userid.New(), Email: e, AuthSubject: sub, CreatedAt: now()})
		if err != nil {
			return User{}, fmt.Errorf("users: create for subject: %w", err)
		}
		// Inserted, or a concurrent login of the same subject won: either way
		// the subject's row exists now. Otherwise the email was taken.
		u, err := s.BySubject(ctx, sub)
		if inserted || !errors.Is(err, ErrNotFound) {
			return u, err
		}
	}
	return User{}, fmt.Errorf("users: create for subject: %s is taken: %w", placeholder, ErrExists)
}

func oidcPlaceholderEmail(sub string) string {
	h := sha256.Sum256([]byte(sub))
	return "oidc-" + hex.EncodeToString(h[:16]) + "@" + OIDCPlaceholderDomain
}

func hashKey(plaintext string) string {
	h := sha256.Sum256([]byte(plaintext))
	return hex.EncodeToString(h[:])
}

// newKeyID returns a random UUID string for an API key row.
func newKeyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	b[6], b[8] = (b[6]&0x0f)|0x40, (b[8]&0x3f)|0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// CreateAPIKey makes a new API key for the user and returns it; only its
// SHA-256 is stored, so this is the one time the key is seen. The key is
// "inboxd_" followed by 32 random bytes in unpadded base64url.
func (s *Store) CreateAPIKey(ctx context.Context, id userid.ID, name string) (string, error) {
	if err := id.Check(); err != nil {
		return "", err
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return "", fmt.Errorf("users: api key: %w", err)
	}
	key := APIKeyPrefix + base64.RawURLEncoding.EncodeToString(secret[:])
	// INSERT ... SELECT inserts nothing for an unknown user: ErrNotFound
	// rather than a foreign-key error.
	res, err := s.db.ExecContext(ctx, s.db.Rebind(
		"INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at) SELECT ?, id, ?, ?, ?, ? FROM users WHERE id = ?"),
		newKeyID(), strings.TrimSpace(name), hashKey(key), key[:apiKeyDisplayLen], now(), id.String())
	if err != nil {
		return "", fmt.Errorf("users: create api key for %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return "", fmt.Errorf("users: create api key for %s: %w", id, err)
	}
	if n == 0 {
		return "", fmt.Errorf("users: create api key for %s: %w", id, ErrNotFound)
	}
	return key, nil
}

// lastUsedEvery bounds how often a key's last_used_at is written.
const lastUsedEvery = time.Minute

// UserByAPIKey returns the owner of the key (disabled or not: the caller
// decides), or ErrNotFound for an unknown key. It records the key's use at
// most once a minute.
func (s *Store) UserByAPIKey(ctx context.Context, plaintext string) (User, error) {
	if !strings.HasPrefix(plaintext, APIKeyPrefix) || len(plaintext) <= apiKeyDisplayLen {
		return User{}, fmt.Errorf("users: api key: %w", ErrNotFound)
	}
	var (
		keyID    string
		lastUsed sql.NullTime
	)
	row := s.db.QueryRowContext(ctx, s.db.Rebind(
		"SELECT k.id, k.last_used_at, u.id, u.email, u.display_name, u.auth_subject, u.admin, u.disabled, u.created_at "+
			"FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?"), hashKey(plaintext))
	u, err := scanUser(prefixScanner{row, []any{&keyID, &lastUsed}})
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("users: api key: %w", ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("users: api key: %w", err)
	}
	if t := now(); !lastUsed.Valid || t.Sub(lastUsed.Time) >= lastUsedEvery {
		if _, err := s.db.ExecContext(ctx, s.db.Rebind("UPDATE api_keys SET last_used_at = ? WHERE id = ?"), t, keyID); err != nil {
			return User{}, fmt.Errorf("users: api key: record use: %w", err)
		}
	}
	return u, nil
}

// prefixScanner scans extra leading columns before the user's.
type prefixScanner struct {
	row   scanner
	extra []any
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.row.Scan(append(p.extra, dest...)...)
}

// ListAPIKeys returns the user's keys, oldest first, without hashes.
func (s *Store) ListAPIKeys(ctx context.Context, id userid.ID) ([]APIKey, error) {
	if err := id.Check(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(
		"SELECT id, name, prefix, created_at, last_used_at FROM api_keys WHERE user_id = ? ORDER BY created_at, id"), id.String())
	if err != nil {
		return nil, fmt.Errorf("users: list api keys of %s: %w", id, err)
	}
	defer rows.Close()
	var out []APIKey
	for rows.Next() {
		var (
			k        APIKey
			lastUsed sql.NullTime
		)
		if err := rows.Scan(&k.ID, &k.Name, &k.Prefix, &k.CreatedAt, &lastUsed); err != nil {
			return nil, fmt.Errorf("users: list api keys of %s: %w", id, err)
		}
		k.CreatedAt = k.CreatedAt.UTC()
		if lastUsed.Valid {
			k.LastUsedAt = lastUsed.Time.UTC()
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("users: list api keys of %s: %w", id, err)
	}
	return out, nil
}
