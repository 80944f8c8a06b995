package poller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// IMAPInbox is the production Inbox. A watched user (IDLE) has one
// connection, which idles and is lent to the user's polls between two IDLEs;
// other users' polls use pooled connections.
type IMAPInbox struct {
	Pool   *mail.Pool
	Dial   mail.DialOptions // for the IDLE connections
	Idle   mail.IdleOptions
	Thread mail.ThreadOptions

	mu      sync.Mutex
	watches map[userid.ID]*watch
}

// watch is a user's IDLE connection as polls see it: ready closes once
// the connection idles (idler is set) or failed to.
type watch struct {
	acct  mail.Account
	ready chan struct{}
	idler atomic.Pointer[mail.Idler]
}

// use runs f on a connection of user: the user's IDLE connection when there
// is one, else a pooled one (given to pooled instead, when set). A pooled
// connection is discarded after any error (its protocol state is unknown)
// and released otherwise.
func (in *IMAPInbox) use(ctx context.Context, user userid.ID, acct mail.Account, f func(c *imapclient.Client) error, pooled func(conn *mail.Conn) error) error {
	if w := in.watching(user, acct); w != nil {
		// A watch being set up is waited for (a dial at most), rather than
		// a pooled connection opened beside it.
		select {
		case <-w.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		if i := w.idler.Load(); i != nil {
			if lent, err := i.Borrow(ctx, f); lent {
				return err
			}
		}
	}
	conn, err := in.Pool.Acquire(ctx, user.String(), acct)
	if err != nil {
		return err
	}
	if pooled == nil {
		err = f(conn.Client())
	} else {
		err = pooled(conn)
	}
	if err != nil {
		conn.Discard()
		return err
	}
	conn.Release()
	return nil
}

// Status checks INBOX: one STATUS on a user's IDLE connection; on a pooled
// one, most often a NOOP on the INBOX it keeps selected (mail.Conn.CheckMailbox).
func (in *IMAPInbox) Status(ctx context.Context, user userid.ID, acct mail.Account) (MailboxStatus, error) {
	var st mail.MailboxState
	err := in.use(ctx, user, acct, func(c *imapclient.Client) error {
		var err error
		st, err = mail.CheckMailbox(ctx, c, inboxMailbox)
		return err
	}, func(conn *mail.Conn) error {
		var err error
		st, err = conn.CheckMailbox(ctx, inboxMailbox)
		return err
	})
	return MailboxStatus{UIDValidity: st.UIDValidity, UIDNext: st.UIDNext}, err
}

// NewUIDs lists the INBOX UIDs above after.
func (in *IMAPInbox) NewUIDs(ctx context.Context, user userid.ID, acct mail.Account, after uint32, limit int) ([]uint32, error) {
	var uids []uint32
	err := in.use(ctx, user, acct, func(c *imapclient.Client) error {
		var err error
		uids, err = mail.UIDsAfter(ctx, c, inboxMailbox, after, limit)
		return err
	}, nil)
	return uids, err
}

// Message fetches the message's thread and renders it as markdown.
func (in *IMAPInbox) Message(ctx context.Context, user userid.ID, acct mail.Account, uid uint32) (Message, error) {
	var out Message
	err := in.use(ctx, user, acct, func(c *imapclient.Client) error {
		th, err := mail.FetchThread(ctx, c, inboxMailbox, imap.UID(uid), in.Thread)
		if err != nil {
			return err
		}
		for _, m := range th.Messages {
			if uint32(m.UID) != uid {
				continue
			}
			out = Message{
				UID: uid,
				Email: workflow.Email{
					MessageID: m.ID,
					From:      mail.FormatAddresses(m.From),
					To:        mail.FormatAddresses(m.To),
					Subject:   m.Subject,
					Body:      m.BodyCleaned,
					UID:       uid,
					Mailbox:   inboxMailbox,
				},
				Markdown: mail.ThreadMarkdown(th),
			}
			if !m.Date.IsZero() {
				out.Email.Date = m.Date.Format("Mon, 02 Jan 2006 15:04:05 -0700")
			}
			if m.Message.MessageID == "" {
				out.Email.MessageID = "" // no Message-ID header: the poller skips it
			}
			if len(m.From) > 0 {
				out.FromAddress = strings.ToLower(m.From[0].Email)
			}
			return nil
		}
		return fmt.Errorf("poller: uid %d not in its own thread: %w", uid, mail.ErrMessageNotFound)
	}, nil)
	return out, err
}

// Watch starts an IDLE on INBOX over a connection of its own (not from the
// pool: it is held for as long as the user is watched), which the user's
// polls borrow between two IDLEs. No goroutine waits on it (see mail.Idler).
func (in *IMAPInbox) Watch(ctx context.Context, user userid.ID, acct mail.Account, changed func(), ended func(error)) error {
	w := &watch{acct: acct, ready: make(chan struct{})}
	in.mu.Lock()
	if in.watches == nil {
		in.watches = map[userid.ID]*watch{}
	}
	in.watches[user] = w
	in.mu.Unlock()
	unwatch := func() {
		in.mu.Lock()
		if in.watches[user] == w {
			delete(in.watches, user)
		}
		in.mu.Unlock()
	}
	defer close(w.ready)
	opts := in.Dial
	opts.Unilateral = &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				changed()
			}
		},
	}
	opts.ReadFailed = func(err error) {
		if i := w.idler.Load(); i != nil {
			i.End(fmt.Errorf("poller: idle connection lost: %w", err))
		}
	}
	c, err := mail.Dial(ctx, acct, opts)
	if err != nil {
		unwatch()
		return err
	}
	i, err := mail.StartIdle(ctx, c, inboxMailbox, in.Idle, func(why error) {
		unwatch()
		ended(why)
	})
	if err != nil {
		unwatch()
		c.Close()
		if errors.Is(err, mail.ErrIdleUnsupported) {
			return ErrIdleUnsupported
		}
		return err
	}
	w.idler.Store(i)
	select {
	case <-c.Closed(): // lost before ReadFailed could see the Idler
		i.End(errors.New("poller: idle connection lost"))
	default:
	}
	return nil
}

// watching returns the user's watch for acct, if any.
func (in *IMAPInbox) watching(user userid.ID, acct mail.Account) *watch {
	in.mu.Lock()
	defer in.mu.Unlock()
	if w := in.watches[user]; w != nil && w.acct == acct {
		return w
	}
	return nil
}
