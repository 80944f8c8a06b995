package jobs

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/userid"
)

// userLabels are the user's own folders: not INBOX, not a special-use
// folder (by attribute, or because it fills a role by name), not a
// container that cannot be selected.
func userLabels(boxes []mail.MailboxInfo) []string {
	special := map[string]bool{"INBOX": true}
	f := mail.ResolveFolderList(boxes)
	for _, role := range mail.Roles() {
		if name, err := f.Name(role); err == nil {
			special[name] = true
		}
	}
	var out []string
	for _, b := range boxes {
		if special[b.Name] || strings.EqualFold(b.Name, "INBOX") || hasSpecialAttr(b.Attrs) {
			continue
		}
		out = append(out, b.Name)
	}
	sort.Strings(out)
	return out
}

func hasSpecialAttr(attrs []imap.MailboxAttr) bool {
	for _, a := range attrs {
		for _, s := range []imap.MailboxAttr{
			imap.MailboxAttrNoSelect, imap.MailboxAttrNonExistent,
			imap.MailboxAttrAll, imap.MailboxAttrArchive, imap.MailboxAttrDrafts, imap.MailboxAttrFlagged,
			imap.MailboxAttrJunk, imap.MailboxAttrSent, imap.MailboxAttrTrash, imap.MailboxAttrImportant,
		} {
			if strings.EqualFold(string(a), string(s)) {
				return true
			}
		}
	}
	return false
}

// runLabels is the label descriptions job: for each of the user's labels
// (at most MaxLabels), a short description written by the LLM from the
// label's most recent messages; stored as {label: description}. Empty
// labels get none.
func (m *Manager) runLabels(ctx context.Context, user userid.ID) error {
	st, err := m.cfg.Settings.Get(ctx, user)
	if err != nil {
		return fmt.Errorf("jobs: read settings: %w", err)
	}
	if st.LLMModel == "" {
		return fmt.Errorf("%w: llm_model is not set", ErrNotConfigured)
	}
	sess, err := m.connect(ctx, st)
	if err != nil {
		return err
	}
	defer sess.close()
	boxes, err := sess.list()
	if err != nil {
		return err
	}
	labels := userLabels(boxes)
	if len(labels) > m.cfg.MaxLabels {
		labels = labels[:m.cfg.MaxLabels]
	}
	out := map[string]string{}
	for _, label := range labels {
		if err := m.interrupted(ctx, user, LabelDescriptions); err != nil {
			return err
		}
		msgs, err := m.recentMessages(sess, label)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Folder: %s\n\nIts %d most recent messages:\n", label, len(msgs))
		for i, msg := range msgs {
			fmt.Fprintf(&b, "\n## Message %d\nFrom: %s\nSubject: %s\n\n%s\n", i+1,
				mail.FormatAddresses(msg.From), msg.Subject, clip(msg.BodyCleaned, promptExcerptRunes))
		}
		desc, err := m.chat(ctx, st, []llm.Message{
			{Role: llm.RoleSystem, Content: "You describe what an email folder (a label) is used for, from its most recent messages, " +
				"so that an assistant can decide which new emails belong in it. Answer with one or two plain sentences, without a preamble."},
			{Role: llm.RoleUser, Content: b.String()},
		}, 200)
		if err != nil {
			return err
		}
		out[label] = clip(desc, maxLabelRunes)
	}
	m.log.Info("jobs: labels described", "user_id", user, "labels", len(out))
	return writeJSON(ctx, m.cfg.KV, user.Key(keyLabelDescriptions), out)
}

// recentMessages fetches the LabelMessages newest messages of folder,
// newest first.
func (m *Manager) recentMessages(sess *session, folder string) ([]*mail.ThreadMessage, error) {
	sel, err := sess.examine(folder)
	if err != nil {
		return nil, err
	}
	if sel.NumMessages == 0 {
		return nil, nil
	}
	from := uint32(1)
	if sel.NumMessages > uint32(m.cfg.LabelMessages) {
		from = sel.NumMessages - uint32(m.cfg.LabelMessages) + 1
	}
	var set imap.SeqSet
	set.AddRange(from, sel.NumMessages)
	list, err := sess.c.Fetch(set, &imap.FetchOptions{UID: true}).Collect()
	if err != nil {
		return nil, sess.err("list messages of "+folder, err)
	}
	refs := make([]msgRef, 0, len(list))
	for _, msg := range list {
		if msg.UID != 0 {
			refs = append(refs, msgRef{folder: folder, uid: msg.UID})
		}
	}
	fetched, err := sess.bodies(refs)
	if err != nil {
		return nil, err
	}
	out := make([]*mail.ThreadMessage, 0, len(fetched))
	for _, r := range refs {
		if tm := fetched[r.key()]; tm != nil {
			out = append(out, tm)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].UID > out[j].UID })
	return out, nil
}
