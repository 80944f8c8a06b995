package mail

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

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
			// Some servers omit UIDNEXT from STATUS: EXAMINE tells it, or
			// the newest UID does.
			sel, err := examineState(c, mailbox)
			if err != nil {
				return err
			}
			st.UIDNext = sel.UIDNext
		}
		return nil
	})
	return st, err
}

// selectionTrust bounds how long Conn.CheckMailbox trusts a selection it
// made: past it the mailbox is examined afresh, so that a server that
// swapped the mailbox under the session without a word (no EXISTS, no BYE)
// is noticed all the same.
const selectionTrust = time.Minute

// selection is a read-only selection of a mailbox that Conn.CheckMailbox
// made on a pooled connection, and what the EXAMINE reported.
type selection struct {
	mailbox string // "": none (never a valid name)
	changes uint64 // the connection's change count just before the EXAMINE
	at      time.Time
	state   MailboxState
}

// current reports whether the selection still tells the mailbox's state:
// no EXISTS or EXPUNGE since, not too old.
func (s *selection) current(mailbox string, changes uint64) bool {
	return s.mailbox == mailbox && changes == s.changes && time.Since(s.at) < selectionTrust
}

// CheckMailbox returns what the package's CheckMailbox returns, but leaves
// mailbox selected (read-only) on the connection, so that the next check of
// the same mailbox on it is one NOOP instead of a STATUS: about half of
// Dovecot's work. An IMAP server must report a new message in the selected
// mailbox with EXISTS in answer to any command (RFC 3501 7.3.1), and the
// pool counts those (and EXPUNGE) for every connection; so when a NOOP
// brings neither, and nothing but checks used the connection meanwhile (any
// Client call forgets the selection), UIDNEXT and UIDVALIDITY are what the
// last EXAMINE said. Any change, or a selection older than a minute, is
// examined afresh.
func (c *Conn) CheckMailbox(ctx context.Context, mailbox string) (MailboxState, error) {
	if err := checkMailboxName(mailbox); err != nil {
		return MailboxState{}, fmt.Errorf("mail: check mailbox: %v", err)
	}
	pc, client := c.pc, c.pc.client
	var st MailboxState
	err := withContext(ctx, client, func() error {
		s := &pc.selected
		if s.current(mailbox, pc.changes.Load()) {
			if err := client.Noop().Wait(); err != nil {
				*s = selection{}
				return fmt.Errorf("mail: check %s: noop: %w", mailbox, err)
			}
			// The NOOP's answer came after every response before it, so
			// the client's state is settled: still our mailbox, unchanged?
			if mb := client.Mailbox(); mb != nil && mb.Name == mailbox && s.current(mailbox, pc.changes.Load()) {
				st = s.state
				return nil
			}
		}
		// Counted before the EXAMINE: an EXISTS that comes after its answer
		// is a change at the next check (none is lost in between).
		*s = selection{}
		changes, at := pc.changes.Load(), time.Now()
		var err error
		if st, err = examineState(client, mailbox); err != nil {
			return err
		}
		*s = selection{mailbox: mailbox, changes: changes, at: at, state: st}
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

// examineState selects mailbox read-only and returns its state. Some
// servers omit UIDNEXT: one past the newest UID means the same.
func examineState(c *imapclient.Client, mailbox string) (MailboxState, error) {
	sel, err := examine(c, mailbox)
	if err != nil {
		return MailboxState{}, err
	}
	st := MailboxState{UIDValidity: sel.UIDValidity, UIDNext: uint32(sel.UIDNext), Messages: sel.NumMessages}
	if st.UIDValidity == 0 {
		return MailboxState{}, fmt.Errorf("mail: examine %s: the server sent no UIDVALIDITY", mailbox)
	}
	if st.UIDNext == 0 && st.Messages > 0 {
		// The last message by number, not "*": go-imap matches a FETCH
		// answer to its command by number, and cannot place one for "*".
		msgs, err := c.Fetch(imap.SeqSetNum(st.Messages), &imap.FetchOptions{UID: true}).Collect()
		if err != nil {
			return MailboxState{}, fmt.Errorf("mail: fetch newest UID of %s: %w", mailbox, err)
		}
		for _, m := range msgs {
			st.UIDNext = max(st.UIDNext, uint32(m.UID)+1)
		}
	}
	st.UIDNext = max(st.UIDNext, 1) // empty: UID 1 comes next
	return st, nil
}
