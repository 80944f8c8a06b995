package poller

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// The per-user trigger state, in the user's own keys.
const (
	keyLastUID         = "last_email_uid"
	keyLastUIDValidity = "last_email_uidvalidity"
)

// inboxMailbox is the only mailbox whose new mail triggers workflows.
const inboxMailbox = "INBOX"

// triggerState is the user's trigger state (last_email_uid and
// last_email_uidvalidity) as this replica last read or wrote it. A tenant
// keeps it for as long as one holding of the lease lasts: no other replica
// polls the user meanwhile, so the stored state cannot change under it, and
// the common poll (nothing new) costs no store read. It is dropped on any
// poll error (a write's outcome may be unknown) and with every new holding.
type triggerState struct {
	loaded         bool // false: read the store first
	known          bool // false: never polled (no baseline yet)
	last, validity uint32
}

// pollOnce checks the user's INBOX once and starts the matching workflows
// of every message above the stored UID. It returns how many new messages
// it handled. ts caches the trigger state between polls (see triggerState).
//
// Why nothing is lost or run twice: last_email_uid advances only after the
// instances of a message exist, and each instance is created with the
// idempotency key {user}:{mailbox}:{uidvalidity}:{uid}:{workflow}; so a crash
// before the advance re-creates nothing, and a crash after it has nothing
// left to do.
func (p *Poller) pollOnce(ctx context.Context, user userid.ID, acct mail.Account, ts *triggerState) (n int, err error) {
	defer func() {
		if err != nil {
			*ts = triggerState{}
		}
	}()
	st, err := p.inbox.Status(ctx, user, acct)
	if err != nil {
		return 0, fmt.Errorf("poll %s: status: %w", user, err)
	}
	if !ts.loaded {
		last, validity, known, err := p.readState(ctx, user)
		if err != nil {
			return 0, err
		}
		*ts = triggerState{loaded: true, known: known, last: last, validity: validity}
	}
	last, validity, known := ts.last, ts.validity, ts.known
	if !known || validity != st.UIDValidity {
		// First poll, or the mailbox was recreated: every UID now means
		// something else. Take the newest as the baseline and run nothing,
		// rather than flood the workflows with old mail.
		if known {
			p.m.uidvalidityResets.Inc()
			p.log.Warn("poller: UIDVALIDITY changed; re-baselining", "user_id", user, "old", validity, "new", st.UIDValidity)
		}
		baseline := uint32(0)
		if st.UIDNext > 0 {
			baseline = st.UIDNext - 1
		}
		// UIDNEXT is the server's word; a mailbox just recreated may report
		// it low. The UIDs present are the truth: none above the baseline
		// may run later as new mail.
		above, err := p.inbox.NewUIDs(ctx, user, acct, baseline, 0)
		if err != nil {
			return 0, fmt.Errorf("poll %s: baseline: %w", user, err)
		}
		for _, uid := range above {
			baseline = max(baseline, uid)
		}
		if err := p.writeState(ctx, user, baseline, st.UIDValidity); err != nil {
			return 0, err
		}
		*ts = triggerState{loaded: true, known: true, last: baseline, validity: st.UIDValidity}
		return 0, nil
	}
	if st.UIDNext != 0 && st.UIDNext <= last+1 {
		return 0, nil // nothing new: the common case costs one check (Inbox.Status)
	}
	uids, err := p.inbox.NewUIDs(ctx, user, acct, last, p.cfg.BatchLimit)
	if err != nil {
		return 0, fmt.Errorf("poll %s: list new messages: %w", user, err)
	}
	if len(uids) == 0 {
		return 0, nil
	}
	wfs, err := p.workflows.ListActiveByTrigger(ctx, user, workflow.TriggerNewEmail)
	if err != nil {
		return 0, fmt.Errorf("poll %s: workflows: %w", user, err)
	}
	for _, uid := range uids {
		if uid <= last {
			continue // a "*" range always returns the newest message
		}
		if err := p.handle(ctx, user, acct, st.UIDValidity, uid, wfs); err != nil {
			return 0, err
		}
		if err := p.kv.Set(ctx, user.Key(keyLastUID), strconv.FormatUint(uint64(uid), 10), 0); err != nil {
			return 0, fmt.Errorf("poll %s: advance last uid to %d: %w", user, uid, err)
		}
		last, ts.last = uid, uid
		p.m.newMessages.Inc()
	}
	return len(uids), nil
}

// handle starts every matching workflow for one message.
func (p *Poller) handle(ctx context.Context, user userid.ID, acct mail.Account, validity, uid uint32, wfs []workflow.Workflow) error {
	var matching []workflow.Workflow
	for _, wf := range wfs {
		if wf.Trigger != nil {
			matching = append(matching, wf)
		}
	}
	if len(matching) == 0 {
		return nil
	}
	msg, err := p.inbox.Message(ctx, user, acct, uid)
	if err != nil {
		return fmt.Errorf("poll %s: fetch uid %d: %w", user, uid, err)
	}
	if msg.Email.MessageID == "" {
		p.log.Info("poller: skipping mail without Message-ID", "user_id", user, "uid", uid)
		return nil
	}
	if selfSent(msg.FromAddress, acct.Username) {
		p.log.Debug("poller: skipping mail sent by the user", "user_id", user, "uid", uid)
		return nil
	}
	in := workflow.TriggerInput{Markdown: msg.Markdown, Email: &msg.Email}
	for _, wf := range matching {
		if !wf.Trigger.FilterRules.Match(msg.FromAddress) {
			continue
		}
		key := fmt.Sprintf("%s:%s:%d:%d:%s", user, inboxMailbox, validity, uid, wf.ID)
		inst, created, err := p.workflows.CreateInstance(ctx, user, wf.ID, in, key)
		if err != nil {
			return fmt.Errorf("poll %s: start workflow %s for uid %d: %w", user, wf.ID, uid, err)
		}
		if created {
			p.log.Info("poller: workflow started", "user_id", user, "workflow_id", wf.ID, "instance_id", inst.ID, "uid", uid)
		}
	}
	return nil
}

// selfSent reports whether the sender is the account itself.
func selfSent(from, username string) bool {
	return from != "" && strings.Contains(username, "@") && strings.EqualFold(from, username)
}

// readState returns the stored last UID and UIDVALIDITY; known is false
// before the first poll.
func (p *Poller) readState(ctx context.Context, user userid.ID) (last, validity uint32, known bool, err error) {
	keys := []string{user.Key(keyLastUID), user.Key(keyLastUIDValidity)}
	vals, err := p.kv.MGet(ctx, keys...)
	if err != nil {
		return 0, 0, false, fmt.Errorf("poll %s: read state: %w", user, err)
	}
	lastS, ok1 := vals[keys[0]]
	valS, ok2 := vals[keys[1]]
	if !ok1 || !ok2 {
		return 0, 0, false, nil
	}
	l, err1 := strconv.ParseUint(lastS, 10, 32)
	v, err2 := strconv.ParseUint(valS, 10, 32)
	if err1 != nil || err2 != nil {
		p.log.Warn("poller: unreadable trigger state; re-baselining", "user_id", user)
		return 0, 0, false, nil
	}
	return uint32(l), uint32(v), true, nil
}

func (p *Poller) writeState(ctx context.Context, user userid.ID, last, validity uint32) error {
	err := p.kv.SetMany(ctx, map[string]string{
		user.Key(keyLastUID):         strconv.FormatUint(uint64(last), 10),
		user.Key(keyLastUIDValidity): strconv.FormatUint(uint64(validity), 10),
	})
	if err != nil {
		return fmt.Errorf("poll %s: write state: %w", user, err)
	}
	return nil
}
