package mail

import (
	"context"
	"fmt"

	"github.com/emersion/go-imap/v2/imapclient"
)

// withContext runs f, which issues IMAP commands on c and waits for them.
// imapclient's commands do not take a context, so if ctx ends before f
// returns, c is closed to make f return, and the context's error is
// reported: the connection is then unusable and must be discarded.
func withContext(ctx context.Context, c *imapclient.Client, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := f()
	if !stop() {
		// The connection was (or is being) closed under f.
		if err != nil {
			return fmt.Errorf("%w (connection closed: %v)", ctx.Err(), err)
		}
		return fmt.Errorf("%w (connection closed)", ctx.Err())
	}
	return err
}
