package workflow

import "github.com/inboxd/inboxd/daemon/storage/sqldb"

// Store keeps workflows, instances and step runs in the SQL database.
type Store struct {
	db *sqldb.DB
}

// NewStore returns a Store over db (migrated).
func NewStore(db *sqldb.DB) *Store { return &Store{db: db} }
