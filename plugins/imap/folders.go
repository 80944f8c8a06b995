package imap

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
)

// maxLabelLen bounds label names, in bytes.
const maxLabelLen = 255

type messageArgs struct {
	MessageID string `json:"messageId"`
}

type labelArgs struct {
	MessageID string `json:"messageId"`
	Label     string `json:"label"`
}

// labelResult is set_label's answer.
type labelResult struct {
	MessageID string `json:"messageId"`
	Label     string `json:"label"`
	Folder    string `json:"folder"`  // the folder that carries the label
	Created   bool   `json:"created"` // the folder was created for it
	// AlreadyLabeled: the folder already held the message (same Message-ID);
	// nothing was copied.
	AlreadyLabeled bool `json:"alreadyLabeled,omitempty"`
	// LabeledMessageID is the id of the copy, when the server reports it
	// (UIDPLUS).
	LabeledMessageID string `json:"labeledMessageId,omitempty"`
}

// archiveResult is remove_from_inbox's answer.
type archiveResult struct {
	MessageID  string `json:"messageId"`
	ArchivedTo string `json:"archivedTo"`
	// ArchivedMessageID is the id of the message in the archive folder,
	// when the server reports it (UIDPLUS).
	ArchivedMessageID string `json:"archivedMessageId,omitempty"`
	// Moved: with MOVE; false means COPY + \Deleted + EXPUNGE.
	Moved bool `json:"moved"`
}

// listFolders lists every mailbox with its attributes.
func listFolders(c *imapclient.Client) ([]*imap.ListData, error) {
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		return nil, fmt.Errorf("list folders: %w", err)
	}
	return list, nil
}

// resolve resolves folder roles from a mailbox list.
func resolve(list []*imap.ListData) mail.Folders {
	infos := make([]mail.MailboxInfo, 0, len(list))
	for _, l := range list {
		infos = append(infos, mail.MailboxInfo{Name: l.Mailbox, Delim: l.Delim, Attrs: l.Attrs})
	}
	return mail.ResolveFolderList(infos)
}

// notLabel reports whether a mailbox attribute marks a folder that is not
// a user label: a special-use folder, or a container that cannot hold mail.
func notLabel(a imap.MailboxAttr) bool {
	for _, s := range []imap.MailboxAttr{
		imap.MailboxAttrAll, imap.MailboxAttrArchive, imap.MailboxAttrDrafts, imap.MailboxAttrFlagged,
		imap.MailboxAttrJunk, imap.MailboxAttrSent, imap.MailboxAttrTrash, imap.MailboxAttrImportant,
		imap.MailboxAttrNoSelect, imap.MailboxAttrNonExistent,
	} {
		if strings.EqualFold(string(a), string(s)) {
			return true
		}
	}
	return false
}

// userLabels picks the user's own folders from a mailbox list: not INBOX,
// not a special-use folder (by attribute, or by the role resolver's known
// names on servers without SPECIAL-USE), not a container that cannot hold
// mail. Sorted by name.
func userLabels(list []*imap.ListData) []string {
	folders := resolve(list)
	roleFolders := map[string]bool{}
	for _, r := range mail.Roles() {
		if n, err := folders.Name(r); err == nil {
			roleFolders[n] = true
		}
	}
	labels := []string{}
	for _, l := range list {
		if strings.EqualFold(l.Mailbox, "INBOX") || roleFolders[l.Mailbox] {
			continue
		}
		if slices.ContainsFunc(l.Attrs, notLabel) {
			continue
		}
		labels = append(labels, l.Mailbox)
	}
	slices.Sort(labels)
	return labels
}

// allLabels is get_all_labels.
func (s *server) allLabels(ctx context.Context, cl call) ([]string, error) {
	var out []string
	err := s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		list, err := listFolders(c)
		if err != nil {
			return err
		}
		out = userLabels(list)
		return nil
	})
	return out, err
}

// checkLabel validates a label name.
func checkLabel(label string) (string, error) {
	label = strings.TrimSpace(label)
	switch {
	case label == "":
		return "", toolErrorf("label is required")
	case len(label) > maxLabelLen:
		return "", toolErrorf("label is too long (at most %d bytes)", maxLabelLen)
	case !utf8.ValidString(label):
		return "", toolErrorf("label is not valid UTF-8")
	case strings.ContainsAny(label, "*%"):
		return "", toolErrorf("label %q contains a wildcard character (* or %%)", label)
	}
	for _, r := range label {
		if r < 0x20 || r == 0x7f {
			return "", toolErrorf("label contains control characters")
		}
	}
	return label, nil
}

// findFolder finds the folder named name: the exact name, else the one
// name matches case-insensitively (when only one does).
func findFolder(list []*imap.ListData, name string) (*imap.ListData, bool) {
	var fold []*imap.ListData
	for _, l := range list {
		if l.Mailbox == name {
			return l, true
		}
		if strings.EqualFold(l.Mailbox, name) {
			fold = append(fold, l)
		}
	}
	if len(fold) == 1 {
		return fold[0], true
	}
	return nil, false
}

func hasAttr(l *imap.ListData, attr imap.MailboxAttr) bool {
	return slices.ContainsFunc(l.Attrs, func(a imap.MailboxAttr) bool { return strings.EqualFold(string(a), string(attr)) })
}

// messageIDOf reads the Message-ID of uid in the selected mailbox; ok is
// false when the message does not exist.
func messageIDOf(c *imapclient.Client, uid imap.UID) (string, bool, error) {
	section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Message-ID"}, Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		return "", false, fmt.Errorf("fetch message: %w", err)
	}
	for _, m := range msgs {
		if m.UID != uid {
			continue
		}
		var raw []byte
		for _, b := range m.BodySection {
			raw = b.Bytes
		}
		id := ""
		if len(strings.TrimSpace(string(raw))) > 0 {
			if pm, err := mail.ParseMessage(raw, mail.ParseOptions{MaxHeaders: 8}); err == nil {
				id = pm.MessageID
			}
		}
		return id, true, nil
	}
	return "", false, nil
}

// setLabel is set_label. go-imap v2 (beta.8) can only STORE FLAGS, not
// Gmail's X-GM-LABELS, so the label is applied the portable way on every
// server: the message is copied into the label's folder, created when
// missing. On Gmail, where labels are folders, that COPY adds the label
// (Gmail's documented IMAP mapping), so the result is the same.
func (s *server) setLabel(ctx context.Context, cl call, args labelArgs) (labelResult, error) {
	mailbox, uid, err := decodeMessageID(args.MessageID)
	if err != nil {
		return labelResult{}, err
	}
	label, err := checkLabel(args.Label)
	if err != nil {
		return labelResult{}, err
	}
	res := labelResult{MessageID: args.MessageID, Label: label}
	err = s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		list, err := listFolders(c)
		if err != nil {
			return err
		}
		target, exists := findFolder(list, label)
		if exists && (hasAttr(target, imap.MailboxAttrNoSelect) || hasAttr(target, imap.MailboxAttrNonExistent)) {
			return toolErrorf("%q is a folder that cannot hold messages; choose another label", target.Mailbox)
		}
		res.Folder = label
		if exists {
			res.Folder = target.Mailbox
		}
		if _, err := selectMailbox(c, mailbox, false); err != nil {
			return err
		}
		msgID, ok, err := messageIDOf(c, uid)
		if err != nil {
			return err
		}
		if !ok {
			return notFound(args.MessageID, mailbox, uid)
		}
		if res.Folder == mailbox {
			res.AlreadyLabeled = true
			return nil
		}
		if exists && msgID != "" {
			// Labelling twice must not copy twice.
			if _, err := selectMailbox(c, res.Folder, false); err != nil {
				return err
			}
			found, err := c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "<" + msgID + ">"}}}, nil).Wait()
			if err != nil {
				return fmt.Errorf("search label folder: %w", err)
			}
			if len(found.AllUIDs()) > 0 {
				res.AlreadyLabeled = true
				return nil
			}
			if _, err := selectMailbox(c, mailbox, false); err != nil {
				return err
			}
		}
		if !exists {
			if err := c.Create(res.Folder, nil).Wait(); err != nil {
				ie, refused := serverRefusal(err)
				if !refused {
					return fmt.Errorf("create %q: %w", res.Folder, err)
				}
				if ie.Code != imap.ResponseCodeAlreadyExists {
					return toolErrorf("cannot create the folder %q for the label (server said: %s)", res.Folder, ie.Text)
				}
			} else {
				res.Created = true
				// Clients that show subscribed folders only should see it;
				// a refusal does not matter.
				_ = c.Subscribe(res.Folder).Wait()
			}
		}
		data, err := c.Copy(imap.UIDSetNum(uid), res.Folder).Wait()
		if err != nil {
			if ie, ok := serverRefusal(err); ok {
				return toolErrorf("cannot copy the message into %q (server said: %s)", res.Folder, ie.Text)
			}
			return fmt.Errorf("copy: %w", err)
		}
		if dest, ok := data.DestUIDs.Nums(); ok && len(dest) == 1 {
			res.LabeledMessageID = mail.EncodeMessageID(res.Folder, dest[0])
		}
		return nil
	})
	return res, err
}

// removeFromInbox is remove_from_inbox: the message is moved from INBOX to
// the archive (the \Archive folder, else \All, e.g. Gmail's All Mail, where
// moving out of INBOX removes the Inbox label). imapclient's Move sends MOVE
// when the server has it, else COPY, STORE +FLAGS.SILENT (\Deleted) and
// UID EXPUNGE (UIDPLUS) or EXPUNGE.
func (s *server) removeFromInbox(ctx context.Context, cl call, args messageArgs) (archiveResult, error) {
	mailbox, uid, err := decodeMessageID(args.MessageID)
	if err != nil {
		return archiveResult{}, err
	}
	res := archiveResult{MessageID: args.MessageID}
	err = s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		list, err := listFolders(c)
		if err != nil {
			return err
		}
		folders := resolve(list)
		inbox, _ := folders.Name(mail.RoleInbox)
		if !strings.EqualFold(mailbox, inbox) {
			return toolErrorf("message %q is not in the inbox but in %q; only inbox messages can be removed from the inbox", args.MessageID, mailbox)
		}
		archive, err := folders.Name(mail.RoleArchive)
		if errors.Is(err, mail.ErrNoFolder) {
			archive, err = folders.Name(mail.RoleAll)
		}
		if err != nil {
			return toolErrorf("cannot archive: the account has no Archive or All Mail folder (%s)", strings.TrimPrefix(err.Error(), "mail: "))
		}
		if _, err := selectMailbox(c, mailbox, true); err != nil {
			return err
		}
		found, err := c.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{imap.UIDSetNum(uid)}}, nil).Wait()
		if err != nil {
			return fmt.Errorf("search: %w", err)
		}
		if !slices.Contains(found.AllUIDs(), uid) {
			return notFound(args.MessageID, mailbox, uid)
		}
		res.Moved = c.Caps().Has(imap.CapMove) || c.Caps().Has(imap.CapIMAP4rev2)
		data, err := c.Move(imap.UIDSetNum(uid), archive).Wait()
		if err != nil {
			if ie, ok := serverRefusal(err); ok {
				return toolErrorf("cannot move the message to %q (server said: %s)", archive, ie.Text)
			}
			return fmt.Errorf("move: %w", err)
		}
		res.ArchivedTo = archive
		if data != nil && data.DestUIDs != nil {
			if set, ok := data.DestUIDs.(imap.UIDSet); ok {
				if dest, ok := set.Nums(); ok && len(dest) == 1 {
					res.ArchivedMessageID = mail.EncodeMessageID(archive, dest[0])
				}
			}
		}
		return nil
	})
	return res, err
}
