package mail

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// MailboxState is what new-mail detection needs of a mailbox.
type MailboxState struct {
	UIDValidity uint32
	UIDNext     uint32 // never 0: computed from the newest UID when the server omits it
	Messages    uint32
}

// CheckMailbox returns the mailbox's UIDVALIDITY and UIDNEXT with one STATUS
// command. STATUS must not be used on the selected mailbox (RFC 3501 6.3.10),
// so a connection that has one selected leaves it first.
func CheckMailbox(ctx context.Context, c *imapclient.Client, mailbox string) (MailboxState, error) {
	if err := checkMailboxName(mailbox); err != nil {
		return MailboxState{}, fmt.Errorf("mail: check mailbox: %v", err)
	}
	var st MailboxState
	err := withContext(ctx, c, func() error {
		if err := leaveMailbox(c); err != nil {
			return err
		}
		data, err := c.Status(mailbox, &imap.StatusOptions{UIDNext: true, UIDValidity: true, NumMessages: true}).Wait()
		if err != nil {
			return fmt.Errorf("mail: status %s: %w", mailbox, err)
		}
		st.UIDValidity = data.UIDValidity
		st.UIDNext = uint32(data.UIDNext)
		if data.NumMessages != nil {
			st.Messages = *data.NumMessages
		}
		if st.UIDValidity == 0 {
			return fmt.Errorf("mail: status %s: the server sent no UIDVALIDITY", mailbox)
		}
		if st.UIDNext == 0 {
			// Some servers omit UIDNEXT: one past the newest UID means the same.
			newest, err := newestUID(c, mailbox)
			if err != nil {
				return err
			}
			st.UIDNext = newest + 1
		}
		return nil
	})
	return st, err
}

// UIDsAfter returns the UIDs of mailbox above after, ascending, at most limit
// (the oldest first, so a backlog is worked off in order). It asks for
// "UID after+1:*", which always returns the newest message even when its UID
// is not above after; that one is filtered out here.
func UIDsAfter(ctx context.Context, c *imapclient.Client, mailbox string, after uint32, limit int) ([]uint32, error) {
	if err := checkMailboxName(mailbox); err != nil {
		return nil, fmt.Errorf("mail: list new messages: %v", err)
	}
	var out []uint32
	err := withContext(ctx, c, func() error {
		if _, err := examine(c, mailbox); err != nil {
			return err
		}
		set := imap.UIDSet{imap.UIDRange{Start: imap.UID(after + 1), Stop: 0}}
		msgs, err := c.Fetch(set, &imap.FetchOptions{UID: true}).Collect()
		if err != nil {
			return fmt.Errorf("mail: fetch new UIDs of %s: %w", mailbox, err)
		}
		for _, m := range msgs {
			if uint32(m.UID) > after {
				out = append(out, uint32(m.UID))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// examine selects mailbox read-only, always (see fetchThread for why the
// client's idea of the selected mailbox is not trusted).
func examine(c *imapclient.Client, mailbox string) (*imap.SelectData, error) {
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, fmt.Errorf("mail: examine %s: %w", mailbox, err)
	}
	return sel, nil
}

// leaveMailbox unselects the selected mailbox, if any. CLOSE would do as
// well on a read-only selection (it expunges nothing), and is what servers
// without UNSELECT get.
func leaveMailbox(c *imapclient.Client) error {
	if c.Mailbox() == nil {
		return nil
	}
	var cmd *imapclient.Command
	if c.Caps().Has(imap.CapUnselect) || c.Caps().Has(imap.CapIMAP4rev2) {
		cmd = c.Unselect()
	} else {
		cmd = c.UnselectAndExpunge()
	}
	if err := cmd.Wait(); err != nil {
		var ie *imap.Error
		if errors.As(err, &ie) {
			// The server says nothing is selected: the state we wanted. The
			// client's state can lag (see fetchThread).
			return nil
		}
		return fmt.Errorf("mail: unselect: %w", err)
	}
	return nil
}

// newestUID returns the highest UID of mailbox (0 when it is empty).
func newestUID(c *imapclient.Client, mailbox string) (uint32, error) {
	sel, err := examine(c, mailbox)
	if err != nil {
		return 0, err
	}
	if sel.NumMessages == 0 {
		return 0, nil
	}
	msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 0, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
	if err != nil {
		return 0, fmt.Errorf("mail: fetch newest UID of %s: %w", mailbox, err)
	}
	var newest uint32
	for _, m := range msgs {
		newest = max(newest, uint32(m.UID))
	}
	return newest, nil
}
