package logs

import "github.com/inboxd/inboxd/daemon/storage/sqldb"

// Store keeps the agent log in the SQL database.
type Store struct {
	db *sqldb.DB
}

// NewStore returns a Store over db (migrated).
func NewStore(db *sqldb.DB) *Store { return &Store{db: db} }
