package mail

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// ErrIdleUnsupported: the server does not advertise IDLE.
var ErrIdleUnsupported = errors.New("mail: server does not support IDLE")

// IdleOptions tunes an Idler.
type IdleOptions struct {
	// Liveness is how often the connection is checked with NOOP between
	// two IDLEs, so a half-open connection is noticed. go-imap re-issues
	// the IDLE itself before servers drop it (RFC 2177: 29 minutes).
	Liveness time.Duration // default 4m
}

// idleStepTimeout bounds one exchange of an Idler with the server: stopping
// an IDLE, a NOOP, selecting the mailbox again, starting an IDLE.
const idleStepTimeout = 30 * time.Second

// Idler keeps one connection idling on a mailbox, and lends it to other
// work (a poll) between two IDLEs, so that a watched user needs a single
// connection. It has no goroutine of its own (go-imap's reader and its IDLE
// restarter aside): changes reach DialOptions.Unilateral from go-imap's
// reader, a timer checks liveness, a borrower runs its commands on its own
// goroutine, and DialOptions.ReadFailed reports a dropped connection. So a
// thousand watched users cost a thousand connections, not a thousand more
// goroutine stacks.
type Idler struct {
	ctx      context.Context // the idler's life
	c        *imapclient.Client
	mailbox  string
	liveness time.Duration
	onEnd    func(error)

	ending  atomic.Bool
	stopCtx func() bool

	mu    sync.Mutex              // one exchange with the server at a time
	cmd   *imapclient.IdleCommand // the IDLE in progress; nil between two
	timer *time.Timer             // the next liveness check
}

// StartIdle selects mailbox on c, a connection dialed for the Idler (its
// DialOptions.Unilateral reporting changes, its DialOptions.ReadFailed
// calling the Idler's End), and starts idling. The Idler owns c from then
// on. It ends when ctx ends, when End is called, or when the connection
// fails; onEnd is then called once, on a goroutine of its own, with the
// reason. A server without IDLE gives ErrIdleUnsupported.
func StartIdle(ctx context.Context, c *imapclient.Client, mailbox string, opts IdleOptions, onEnd func(error)) (*Idler, error) {
	if !c.Caps().Has(imap.CapIdle) && !c.Caps().Has(imap.CapIMAP4rev2) {
		return nil, ErrIdleUnsupported
	}
	if opts.Liveness <= 0 {
		opts.Liveness = 4 * time.Minute
	}
	i := &Idler{ctx: ctx, c: c, mailbox: mailbox, liveness: opts.Liveness, onEnd: onEnd}
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.resumeLocked(); err != nil {
		return nil, err
	}
	i.timer = time.AfterFunc(i.liveness, i.check)
	i.stopCtx = context.AfterFunc(ctx, func() { i.End(ctx.Err()) })
	return i, nil
}

// End ends the Idler (at most once) and closes its connection. It never
// blocks, so go-imap's reader may call it (DialOptions.ReadFailed), and so
// may an Idler method holding the lock.
func (i *Idler) End(why error) {
	if !i.ending.CompareAndSwap(false, true) {
		return
	}
	if i.stopCtx != nil {
		i.stopCtx()
	}
	go func() {
		i.c.Close() // unblocks an exchange in progress (and waits for go-imap's reader)
		i.mu.Lock() // that exchange has returned
		if i.timer != nil {
			i.timer.Stop()
		}
		i.mu.Unlock()
		i.onEnd(why)
	}()
}

// Borrow stops the IDLE, runs f on the connection on the caller's
// goroutine, selects the mailbox again and idles. lent is false when the
// Idler has ended, or its connection failed before f ran: the caller should
// use another connection then. An error from f ends the Idler, since the
// connection's state is then unknown. f may select other mailboxes.
func (i *Idler) Borrow(ctx context.Context, f func(c *imapclient.Client) error) (lent bool, err error) {
	i.mu.Lock()
	if i.ending.Load() {
		i.mu.Unlock()
		return false, nil
	}
	defer i.mu.Unlock()
	i.timer.Stop()
	if err := i.pauseLocked(ctx, false); err != nil {
		i.End(err)
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		return false, nil
	}
	if err := f(i.c); err != nil {
		i.End(err)
		return true, err
	}
	if err := i.resumeLocked(); err != nil {
		i.End(err)
		return true, nil // f's work is done; only the IDLE is lost
	}
	i.timer.Reset(i.liveness)
	return true, nil
}

// check proves the connection alive between two IDLEs (timer callback).
func (i *Idler) check() {
	i.mu.Lock()
	if i.ending.Load() {
		i.mu.Unlock()
		return
	}
	err := i.pauseLocked(i.ctx, true)
	if err == nil {
		err = i.resumeLocked()
	}
	if err == nil {
		i.timer.Reset(i.liveness)
	} else {
		i.End(err)
	}
	i.mu.Unlock()
}

// pauseLocked stops the IDLE in progress and, with noop, checks the
// connection with a NOOP (a borrower's own commands prove it alive). A
// half-open connection fails here, within idleStepTimeout.
func (i *Idler) pauseLocked(ctx context.Context, noop bool) error {
	cmd := i.cmd
	if cmd == nil {
		return errors.New("mail: not idling")
	}
	i.cmd = nil
	sctx, cancel := context.WithTimeout(ctx, idleStepTimeout)
	defer cancel()
	return withContext(sctx, i.c, func() error {
		if err := cmd.Close(); err != nil {
			return fmt.Errorf("mail: stop idle: %w", err)
		}
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("mail: idle: %w", err)
		}
		if noop {
			return i.c.Noop().Wait()
		}
		return nil
	})
}

// resumeLocked selects the mailbox (read-only, always: see examine) and
// starts an IDLE.
func (i *Idler) resumeLocked() error {
	sctx, cancel := context.WithTimeout(i.ctx, idleStepTimeout)
	defer cancel()
	return withContext(sctx, i.c, func() error {
		if _, err := examine(i.c, i.mailbox); err != nil {
			return err
		}
		cmd, err := i.c.Idle()
		if err != nil {
			return fmt.Errorf("mail: idle: %w", err)
		}
		i.cmd = cmd
		return nil
	})
}
