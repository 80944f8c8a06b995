package vectors

import (
	"errors"
	"fmt"
	"strings"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
)

// Backend is a Store that holds resources to release.
type Backend interface {
	Store
	Close() error
}

// Options configure Open.
type Options struct {
	Embedded EmbeddedOptions
	// Qdrant adds TLS settings and dial options to a qdrant:// URL's.
	Qdrant QdrantConfig
}

// Open returns the backend named by a vectors_url: "embedded" (or "") for
// the embedded store on db, or "qdrant://host:6334?api_key=...&tenancy=collection|payload&tls=true".
func Open(url string, db *sqldb.DB, opts Options) (Backend, error) {
	switch {
	case url == "" || url == "embedded":
		if db == nil {
			return nil, errors.New("vectors: the embedded store needs the SQL database")
		}
		return NewEmbedded(db, opts.Embedded), nil
	case strings.HasPrefix(url, "qdrant://"):
		cfg, err := ParseQdrantURL(url)
		if err != nil {
			return nil, err
		}
		cfg.TLSConfig = opts.Qdrant.TLSConfig
		cfg.DialOptions = opts.Qdrant.DialOptions
		return NewQdrant(cfg)
	}
	scheme, _, _ := strings.Cut(url, ":")
	return nil, fmt.Errorf("vectors: vectors_url scheme %q unknown (want embedded or qdrant://)", scheme)
}
