// Package users owns the users table and API keys: who exists, who is an admin,
// who is disabled, and which hashed API key belongs to whom.
package users

import (
	"errors"
	"time"

	"github.com/inboxd/inboxd/daemon/userid"
)

var (
	// ErrNotFound: no such user (or API key).
	ErrNotFound = errors.New("users: not found")
	// ErrExists: a user with that email or auth subject exists already.
	ErrExists = errors.New("users: already exists")
)

// DefaultEmail is the email of the default user of auth modes none and password.
const DefaultEmail = "default-user@example.com"

// User is one account. AuthSubject is the OIDC "sub" ("" for local users).
type User struct {
	ID          userid.ID `json:"id"`
	Email       string    `json:"email"`
	DisplayName string    `json:"display_name"`
	AuthSubject string    `json:"auth_subject,omitempty"`
	Admin       bool      `json:"admin"`
	Disabled    bool      `json:"disabled"`
	CreatedAt   time.Time `json:"created_at"`
}

// NewUser is what Create needs; the store assigns ID and CreatedAt.
type NewUser struct {
	Email       string
	DisplayName string
	AuthSubject string
	Admin       bool
}
