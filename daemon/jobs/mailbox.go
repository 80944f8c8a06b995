package jobs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
)

// Parse limits for the messages jobs read: bodies, not attachments.
const (
	fetchMaxSize     = 2 << 20   // bytes of one raw message fetched
	fetchMaxBodyText = 100 << 10 // bytes of body text kept
	headerChunk      = 500       // UIDs per header FETCH
)

// session is a job's own IMAP connection. imapclient's commands take no
// context, so the connection is closed when the job's context ends, which
// makes a command in flight fail; err then reports the context's cause.
type session struct {
	ctx  context.Context
	c    *imapclient.Client
	stop func() bool
}

func (m *Manager) connect(ctx context.Context, st settings.Settings) (*session, error) {
	c, err := mail.Dial(ctx, st.IMAPAccount(), m.cfg.MailDial)
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return &session{ctx: ctx, c: c, stop: stop}, nil
}

// close logs out (bounded) and closes the connection.
func (s *session) close() {
	if s.stop() {
		done := make(chan struct{})
		go func() {
			_ = s.c.Logout().Wait() // best effort
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	s.c.Close()
}

// err wraps a command's error, naming the context's cause when the
// connection was closed under it.
func (s *session) err(what string, err error) error {
	if err == nil {
		return nil
	}
	if s.ctx.Err() != nil {
		return fmt.Errorf("jobs: %s: %w", what, context.Cause(s.ctx))
	}
	return fmt.Errorf("jobs: %s: %w", what, err)
}

// list returns the account's mailboxes as LIST reports them.
func (s *session) list() ([]mail.MailboxInfo, error) {
	data, err := s.c.List("", "*", nil).Collect()
	if err != nil {
		return nil, s.err("list folders", err)
	}
	out := make([]mail.MailboxInfo, 0, len(data))
	for _, d := range data {
		out = append(out, mail.MailboxInfo{Name: d.Mailbox, Delim: d.Delim, Attrs: d.Attrs})
	}
	return out, nil
}

// examine selects folder read-only, unless it is selected already.
func (s *session) examine(folder string) (*imap.SelectData, error) {
	sel, err := s.c.Select(folder, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, s.err("examine "+folder, err)
	}
	return sel, nil
}

// msgRef is one message as threading sees it: where it is and the ids
// that link it to others.
type msgRef struct {
	folder string
	uid    imap.UID
	hdr    mail.Header // MessageID, InReplyTo, References, Date (hdr.UID unused)
	from   string      // the sender's address, lower case
}

type refKey struct {
	folder string
	uid    imap.UID
}

func (r msgRef) key() refKey { return refKey{r.folder, r.uid} }

// listFolder returns the headers of folder's messages since the date (at
// most scan, the newest), and the folder's UIDVALIDITY.
func (s *session) listFolder(folder string, since time.Time, scan int) ([]msgRef, uint32, error) {
	sel, err := s.examine(folder)
	if err != nil {
		return nil, 0, err
	}
	if sel.NumMessages == 0 {
		return nil, sel.UIDValidity, nil
	}
	data, err := s.c.UIDSearch(&imap.SearchCriteria{Since: since}, nil).Wait()
	if err != nil {
		return nil, 0, s.err("search "+folder, err)
	}
	uids := data.AllUIDs()
	slices.Sort(uids)
	if len(uids) > scan {
		uids = uids[len(uids)-scan:] // UIDs grow with arrival: the newest
	}
	refs, err := s.headers(folder, uids)
	return refs, sel.UIDValidity, err
}

// headers fetches the threading fields of uids in the selected folder.
func (s *session) headers(folder string, uids []imap.UID) ([]msgRef, error) {
	section := &imap.FetchItemBodySection{
		Specifier:    imap.PartSpecifierHeader,
		HeaderFields: []string{"Message-ID", "In-Reply-To", "References", "Date", "From"},
		Peek:         true,
	}
	var out []msgRef
	for len(uids) > 0 {
		n := min(len(uids), headerChunk)
		var set imap.UIDSet
		for _, u := range uids[:n] {
			set.AddNum(u)
		}
		uids = uids[n:]
		msgs, err := s.c.Fetch(set, &imap.FetchOptions{
			UID: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{section},
		}).Collect()
		if err != nil {
			return nil, s.err("fetch headers of "+folder, err)
		}
		for _, msg := range msgs {
			if msg.UID == 0 {
				continue
			}
			ref := msgRef{folder: folder, uid: msg.UID, hdr: mail.Header{Date: msg.InternalDate}}
			if raw := msg.FindBodySection(section); len(raw) > 0 {
				if p, err := mail.ParseMessage(raw, mail.ParseOptions{MaxHeaders: 16}); err == nil {
					ref.hdr.MessageID, ref.hdr.InReplyTo, ref.hdr.References = p.MessageID, p.InReplyTo, p.References
					if !p.Date.IsZero() {
						ref.hdr.Date = p.Date
					}
					if len(p.From) > 0 {
						ref.from = strings.ToLower(p.From[0].Email)
					}
				}
			}
			out = append(out, ref)
		}
	}
	return out, nil
}

// bodies fetches and parses messages, folder by folder, one message in
// memory at a time. Messages gone since they were listed are left out.
func (s *session) bodies(refs []msgRef) (map[refKey]*mail.ThreadMessage, error) {
	byFolder := map[string][]imap.UID{}
	var folders []string
	for _, r := range refs {
		if _, ok := byFolder[r.folder]; !ok {
			folders = append(folders, r.folder)
		}
		byFolder[r.folder] = append(byFolder[r.folder], r.uid)
	}
	out := make(map[refKey]*mail.ThreadMessage, len(refs))
	opts := mail.ParseOptions{MaxSize: fetchMaxSize, MaxBodyText: fetchMaxBodyText}
	for _, folder := range folders {
		if _, err := s.examine(folder); err != nil {
			return nil, err
		}
		var set imap.UIDSet
		for _, u := range byFolder[folder] {
			set.AddNum(u)
		}
		msgs, err := mail.FetchMessages(s.c, folder, set, opts)
		if err != nil {
			return nil, s.err("fetch messages of "+folder, err)
		}
		for _, tm := range msgs {
			if tm.Date.IsZero() {
				tm.Date = tm.InternalDate
			}
			out[refKey{folder, tm.UID}] = tm
		}
	}
	return out, nil
}

// mailboxState is a folder's UIDVALIDITY and newest UID, for the
// incremental cursor.
type mailboxState struct {
	Folder      string `json:"folder"`
	UIDValidity uint32 `json:"uidvalidity"`
	UID         uint32 `json:"uid"` // messages up to this UID are vectorised
}

// state reads folder's UIDVALIDITY and UIDNEXT (STATUS).
func (s *session) state(folder string) (mailboxState, error) {
	st, err := mail.CheckMailbox(s.ctx, s.c, folder)
	if err != nil {
		return mailboxState{}, s.err("status "+folder, err)
	}
	return mailboxState{Folder: folder, UIDValidity: st.UIDValidity, UID: st.UIDNext - 1}, nil
}

// sources are the folders threads are taken from.
type sources struct {
	sent string // "" when the account has no Sent folder
	main string // All Mail, else INBOX
	// inbox is INBOX (new mail for the incremental run).
	inbox string
}

func (s sources) folders() []string {
	var out []string
	if s.sent != "" {
		out = append(out, s.sent)
	}
	if s.main != "" && s.main != s.sent {
		out = append(out, s.main)
	}
	return out
}

func resolveSources(boxes []mail.MailboxInfo) sources {
	f := mail.ResolveFolderList(boxes)
	var src sources
	if name, err := f.Name(mail.RoleSent); err == nil {
		src.sent = name
	}
	if name, err := f.Name(mail.RoleInbox); err == nil {
		src.inbox = name
	} else {
		src.inbox = "INBOX"
	}
	src.main = src.inbox
	if name, err := f.Name(mail.RoleAll); err == nil {
		src.main = name
	}
	return src
}
