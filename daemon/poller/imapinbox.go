package poller

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// IMAPInbox is the production Inbox: pooled connections for checks and
// fetches, and one dedicated connection per user for IDLE.
type IMAPInbox struct {
	Pool   *mail.Pool
	Dial   mail.DialOptions // for the IDLE connections
	Idle   mail.IdleOptions
	Thread mail.ThreadOptions
}

// use runs f on a pooled connection of user, discarding the connection
// after any error (its protocol state is unknown) and releasing it otherwise.
func (in *IMAPInbox) use(ctx context.Context, user userid.ID, acct mail.Account, f func(c *imapclient.Client) error) error {
	conn, err := in.Pool.Acquire(ctx, user.String(), acct)
	if err != nil {
		return err
	}
	if err := f(conn.Client()); err != nil {
		conn.Discard()
		return err
	}
	conn.Release()
	return nil
}

// Status is one STATUS of INBOX.
func (in *IMAPInbox) Status(ctx context.Context, user userid.ID, acct mail.Account) (MailboxStatus, error) {
	var st mail.MailboxState
	err := in.use(ctx, user, acct, func(c *imapclient.Client) error {
		var err error
		st, err = mail.CheckMailbox(ctx, c, inboxMailbox)
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
	})
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
	})
	return out, err
}

// Watch idles on INBOX over a connection of its own (not from the pool: it
// is held for as long as the user is watched).
func (in *IMAPInbox) Watch(ctx context.Context, user userid.ID, acct mail.Account, changed func()) error {
	opts := in.Dial
	opts.Unilateral = &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				changed()
			}
		},
	}
	c, err := mail.Dial(ctx, acct, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	err = mail.Idle(ctx, c, inboxMailbox, in.Idle)
	if errors.Is(err, mail.ErrIdleUnsupported) {
		return ErrIdleUnsupported
	}
	return err
}
