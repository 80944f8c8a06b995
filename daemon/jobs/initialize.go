package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
)

// vectorRun is what an initialisation or incremental run works with: the
// user's settings, model, embedder and IMAP session.
type vectorRun struct {
	m     *Manager
	user  userid.ID
	st    settings.Settings
	model embed.Model
	emb   *embed.Client
	sess  *session
	src   sources
	// userAddrs are the user's own addresses: the senders found in Sent,
	// and the IMAP username when it is an address.
	userAddrs map[string]bool
}

// open prepares a run: settings, model (saved when first chosen), the
// collection (recreated for another model), embedder, IMAP session and
// folders. The caller closes run.sess.
func (m *Manager) open(ctx context.Context, user userid.ID) (*vectorRun, bool, error) {
	st, err := m.cfg.Settings.Get(ctx, user)
	if err != nil {
		return nil, false, fmt.Errorf("jobs: read settings: %w", err)
	}
	if !st.IMAPComplete() {
		return nil, false, fmt.Errorf("%w: the IMAP account is not set up", ErrNotConfigured)
	}
	model, err := m.userModel(ctx, user, st)
	if err != nil {
		return nil, false, err
	}
	emb, err := m.embedder(model, st)
	if err != nil {
		return nil, false, err
	}
	exists, err := m.prepareCollection(ctx, user, model)
	if err != nil {
		return nil, false, err
	}
	sess, err := m.connect(ctx, st)
	if err != nil {
		return nil, false, err
	}
	boxes, err := sess.list()
	if err != nil {
		sess.close()
		return nil, false, err
	}
	r := &vectorRun{m: m, user: user, st: st, model: model, emb: emb, sess: sess, src: resolveSources(boxes), userAddrs: map[string]bool{}}
	if u := strings.ToLower(strings.TrimSpace(st.IMAPUsername)); strings.Contains(u, "@") {
		r.userAddrs[u] = true
	}
	return r, exists, nil
}

// listThreads lists the headers of the source folders since the window's
// start and groups them into threads; it learns the user's addresses from
// Sent on the way.
func (r *vectorRun) listThreads() ([]*threadRef, error) {
	since, scan := r.m.cfg.since(), r.m.cfg.ScanPerFolder
	var all []msgRef
	for _, folder := range r.src.folders() {
		refs, _, err := r.sess.listFolder(folder, since, scan)
		if err != nil {
			return nil, err
		}
		if folder == r.src.sent {
			for _, ref := range refs {
				if ref.from != "" {
					r.userAddrs[ref.from] = true
				}
			}
		}
		all = append(all, refs...)
	}
	return buildThreads(all, r.m.cfg.MaxThreadMessages), nil
}

// isSent reports whether a message is the user's: found in Sent, or sent
// from one of the user's addresses.
func (r *vectorRun) isSent(ref msgRef, m *mail.ThreadMessage) bool {
	if r.src.sent != "" && ref.folder == r.src.sent {
		return true
	}
	if ref.from != "" && r.userAddrs[ref.from] {
		return true
	}
	return len(m.From) > 0 && r.userAddrs[strings.ToLower(m.From[0].Email)]
}

// store fetches, embeds and upserts one batch of threads.
func (r *vectorRun) store(ctx context.Context, batch []*threadRef) (int, error) {
	var refs []msgRef
	for _, t := range batch {
		refs = append(refs, t.msgs...)
	}
	fetched, err := r.sess.bodies(refs)
	if err != nil {
		return 0, err
	}
	var docs []threadDoc
	for _, t := range batch {
		if d, ok := document(t, fetched, r.isSent); ok {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		return 0, nil
	}
	texts := make([]string, len(docs))
	for i, d := range docs {
		texts[i] = d.markdown
	}
	embs, err := r.emb.EmbedDocuments(ctx, texts)
	if err != nil {
		return 0, fmt.Errorf("jobs: embed threads: %w", err)
	}
	points := make([]vectors.Point, len(docs))
	for i, d := range docs {
		points[i] = vectors.Point{ID: d.id, Vector: embs[i].Vector, Payload: d.payload}
	}
	if err := r.m.cfg.Vectors.Upsert(ctx, r.user, r.model.Key, r.model.Dimensions, points); err != nil {
		return 0, fmt.Errorf("jobs: store threads: %w", err)
	}
	return len(points), nil
}

// existing returns which of ids already have a point in the user's
// collection: a search restricted to those thread ids (any probe vector
// will do).
func (r *vectorRun) existing(ctx context.Context, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	n, err := r.m.cfg.Vectors.Count(ctx, r.user)
	if err != nil {
		return nil, fmt.Errorf("jobs: count points: %w", err)
	}
	if n == 0 {
		return out, nil
	}
	probe := make([]float32, r.model.Dimensions)
	probe[0] = 1
	const chunk = 200
	for len(ids) > 0 {
		part := ids[:min(chunk, len(ids))]
		ids = ids[len(part):]
		hits, err := r.m.cfg.Vectors.SearchVector(ctx, r.user, probe, len(part), nil, vectors.Filter{Must: map[string]any{"thread_id": part}})
		if err != nil {
			return nil, fmt.Errorf("jobs: look up stored threads: %w", err)
		}
		for _, h := range hits {
			out[h.ID] = true
		}
	}
	return out, nil
}

// cursor reads the user's incremental cursor.
func (m *Manager) cursor(ctx context.Context, user userid.ID) (map[string]mailboxState, error) {
	out := map[string]mailboxState{}
	raw, err := m.cfg.KV.Get(ctx, user.Key(keyInboxCursor))
	if errors.Is(err, kv.ErrNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("jobs: read cursor: %w", err)
	}
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		return map[string]mailboxState{}, nil // unreadable: start over from now
	}
	return out, nil
}

// states reads the current state of the Sent and INBOX folders.
func (r *vectorRun) states() (map[string]mailboxState, error) {
	out := map[string]mailboxState{}
	for role, folder := range map[string]string{"sent": r.src.sent, "inbox": r.src.inbox} {
		if folder == "" {
			continue
		}
		st, err := r.sess.state(folder)
		if err != nil {
			return nil, err
		}
		out[role] = st
	}
	return out, nil
}

// runInitialize is the inbox initialisation job.
func (m *Manager) runInitialize(ctx context.Context, user userid.ID) error {
	r, exists, err := m.open(ctx, user)
	if err != nil {
		return err
	}
	defer r.sess.close()
	// The folders' state before listing: mail that arrives while this runs
	// is left to the incremental run.
	states, err := r.states()
	if err != nil {
		return err
	}
	threads, err := r.listThreads()
	if err != nil {
		return err
	}
	selected := selectThreads(threads, r.src.folders(), m.cfg.ThreadsPerFolder)
	todo := selected
	if exists {
		ids := make([]string, len(selected))
		for i, t := range selected {
			ids[i] = t.id
		}
		have, err := r.existing(ctx, ids)
		if err != nil {
			return err
		}
		todo = todo[:0:0]
		for _, t := range selected {
			if !have[t.id] {
				todo = append(todo, t)
			}
		}
	}
	p := Progress{Done: len(selected) - len(todo), Total: len(selected)}
	if err := m.writeProgress(ctx, user, p); err != nil {
		return err
	}
	m.log.Info("jobs: initialisation listed threads", "user_id", user, "threads", p.Total, "already_stored", p.Done, "model", r.model.Key)
	for len(todo) > 0 {
		if err := m.interrupted(ctx, user, Initialize); err != nil {
			return err
		}
		batch := todo[:min(m.cfg.BatchSize, len(todo))]
		todo = todo[len(batch):]
		if _, err := r.store(ctx, batch); err != nil {
			return err
		}
		p.Done += len(batch)
		if err := m.writeProgress(ctx, user, p); err != nil {
			return err
		}
		if m.cfg.afterBatch != nil {
			m.cfg.afterBatch(ctx, user, p)
		}
	}
	return writeJSON(ctx, m.cfg.KV, user.Key(keyInboxCursor), states)
}

func (m *Manager) writeProgress(ctx context.Context, user userid.ID, p Progress) error {
	return writeJSON(ctx, m.cfg.KV, user.Key(keyInboxProgress), p)
}

// runIncremental vectorises the threads of messages that arrived in Sent or
// INBOX since the cursor (written by the initialisation and by every
// incremental run). A folder without a cursor, or whose UIDVALIDITY
// changed, is baselined: its current messages count as seen.
func (m *Manager) runIncremental(ctx context.Context, user userid.ID) error {
	if status, err := m.cfg.KV.Get(ctx, user.Key(keyInboxStatus)); err != nil || status != StatusCompleted {
		return nil // the initialisation (re)runs, or never did: it covers the new mail
	}
	st, err := m.cfg.Settings.Get(ctx, user)
	if err != nil {
		return fmt.Errorf("jobs: read settings: %w", err)
	}
	if model, _, err := ModelFor(m.cfg.Catalog, st); err == nil {
		have, dims, exists, err := m.cfg.Vectors.Info(ctx, user)
		if err != nil {
			return fmt.Errorf("jobs: collection info: %w", err)
		}
		if exists && (have != model.Key || dims != model.Dimensions) {
			// The user changed embedding model: everything is re-embedded.
			m.log.Info("jobs: embedding model changed: reinitialising", "user_id", user, "from", have, "to", model.Key)
			m.wg.Add(1) // legal: this job holds the count above zero
			go func() {
				defer m.wg.Done()
				rctx, cancel := context.WithTimeout(m.base, time.Minute)
				defer cancel()
				if err := m.Reinitialize(rctx, user); err != nil && !errors.Is(err, ErrClosed) {
					m.log.Warn("jobs: reinitialise after a model change", "user_id", user, "error", err)
				}
			}()
			return nil
		}
	}
	r, _, err := m.open(ctx, user)
	if err != nil {
		return err
	}
	defer r.sess.close()
	cur, err := m.cursor(ctx, user)
	if err != nil {
		return err
	}
	states, err := r.states()
	if err != nil {
		return err
	}
	newIDs := map[string]bool{}
	newRefs := map[refKey]bool{}
	for role, now := range states {
		was, ok := cur[role]
		if !ok || was.Folder != now.Folder || was.UIDValidity != now.UIDValidity || was.UID >= now.UID {
			continue // baselined (or nothing new): now becomes the cursor
		}
		uids, err := mail.UIDsAfter(ctx, r.sess.c, now.Folder, was.UID, 0)
		if err != nil {
			return r.sess.err("list new messages", err)
		}
		if len(uids) == 0 {
			continue
		}
		list := make([]imap.UID, len(uids))
		for i, u := range uids {
			list[i] = imap.UID(u)
		}
		if _, err := r.sess.examine(now.Folder); err != nil {
			return err
		}
		refs, err := r.sess.headers(now.Folder, list)
		if err != nil {
			return err
		}
		for _, ref := range refs {
			newRefs[ref.key()] = true
			if ref.hdr.MessageID != "" {
				newIDs[ref.hdr.MessageID] = true
			}
		}
	}
	if len(newRefs) > 0 {
		threads, err := r.listThreads()
		if err != nil {
			return err
		}
		var todo []*threadRef
		for _, t := range threads {
			for _, ref := range t.msgs {
				if newRefs[ref.key()] || (ref.hdr.MessageID != "" && newIDs[ref.hdr.MessageID]) {
					todo = append(todo, t)
					break
				}
			}
		}
		todo = dedupeIDs(todo)
		stored := 0
		for len(todo) > 0 {
			if err := m.interrupted(ctx, user, Incremental); err != nil {
				return err
			}
			batch := todo[:min(m.cfg.BatchSize, len(todo))]
			todo = todo[len(batch):]
			n, err := r.store(ctx, batch)
			if err != nil {
				return err
			}
			stored += n
		}
		m.log.Info("jobs: incremental vectorisation", "user_id", user, "new_messages", len(newRefs), "threads", stored)
	}
	return writeJSON(ctx, m.cfg.KV, user.Key(keyInboxCursor), states)
}
