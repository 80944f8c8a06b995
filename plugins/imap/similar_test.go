package imap

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/testsvc"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

// similarTopics are the seeded corpus's topics, each with a vocabulary no
// other topic shares, so that the offline (lexical) embedding model puts a
// topic's threads together and the right neighbours are known.
var similarTopics = []struct {
	name  string
	words []string
}{
	{"sailing", strings.Fields("regatta yacht spinnaker keel harbour mooring skipper tacking")},
	{"baking", strings.Fields("sourdough levain flour oven crust proofing baguette rye")},
	{"cluster", strings.Fields("kubernetes helm pod ingress replica namespace kubelet etcd")},
	{"music", strings.Fields("violin cello concerto rehearsal orchestra symphony conductor sonata")},
	{"orchard", strings.Fields("orchard pruning cider blossom grafting mulch compost saplings")},
}

// threadsPerTopic is how many threads each user has of each topic.
const threadsPerTopic = 6

// seededThread is what a delivered thread's markdown must show.
type seededThread struct {
	topic, subject, phrase string
}

// topicCorpus is one user's seeded threads.
type topicCorpus struct {
	threads map[string]seededThread // by thread id (the root's Message-ID)
	// seeds are, by topic, the INBOX UID of the user's reply in the topic's
	// first thread: a message that is not the thread's root.
	seeds map[string]uint32
}

// seedTopics appends threadsPerTopic threads per topic to name's INBOX
// (over one connection), with ids "{prefix}-{topic}-{j}@example.org", each
// from its own sender and answered by the user: the threads are alike but
// for their words.
func (e *env) seedTopics(t *testing.T, name, prefix string) topicCorpus {
	t.Helper()
	conn := e.dial(t, name)
	deliver := func(raw []byte) uint32 {
		t.Helper()
		cmd := conn.Append("INBOX", int64(len(raw)), nil)
		if _, err := cmd.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Close(); err != nil {
			t.Fatal(err)
		}
		data, err := cmd.Wait()
		if err != nil {
			t.Fatalf("append to %s: %v", name, err)
		}
		return uint32(data.UID)
	}
	c := topicCorpus{threads: map[string]seededThread{}, seeds: map[string]uint32{}}
	now := time.Now().Add(-time.Hour)
	n := 0
	for _, topic := range similarTopics {
		w := func(i int) string { return topic.words[i%len(topic.words)] }
		for j := range threadsPerTopic {
			n++
			root := fmt.Sprintf("%s-%s-%d@example.org", prefix, topic.name, j)
			th := seededThread{
				topic:   topic.name,
				subject: fmt.Sprintf("The %s and the %s", w(j), w(j+5)),
				phrase:  fmt.Sprintf("I wanted to ask about the %s and the %s.", w(j), w(j+1)),
			}
			date := now.Add(-time.Duration(n) * time.Hour)
			deliver(message(fmt.Sprintf("From: Friend %d <friend%d@example.org>\nTo: %s\nSubject: %s\nDate: %s\nMessage-ID: <%s>\n",
				n, n, name, th.subject, date.Format(time.RFC1123Z), root),
				fmt.Sprintf("Hello,\n\n%s Our %s needs attention before the %s; could you look at the %s? The %s, %s and %s can wait.\n\nBest,\nFriend %d\n",
					th.phrase, w(j+2), w(j+3), w(j+4), w(j+5), w(j+6), w(j+7), n)))
			c.threads[root] = th
			uid := deliver(message(fmt.Sprintf("From: %s\nTo: Friend %d <friend%d@example.org>\nSubject: Re: %s\nDate: %s\nMessage-ID: <re-%s>\nIn-Reply-To: <%s>\nReferences: <%s>\n",
				name, n, n, th.subject, date.Add(30*time.Minute).Format(time.RFC1123Z), root, root, root),
				fmt.Sprintf("Thanks, the %s and the %s are fine; I will check the %s tomorrow.\n", w(j+1), w(j+3), w(j+6))))
			if j == 0 {
				c.seeds[topic.name] = uid
			}
		}
	}
	return c
}

// seededIndex is inboxd's side of the test: real stores (SQLite), the
// embedded vector store, and the jobs that index a user's mail.
type seededIndex struct {
	settings *settings.Store
	users    *users.Store
	vectors  vectors.Store
	catalog  *embed.Catalog
	jobs     *jobs.Manager
}

func newSeededIndex(t *testing.T) *seededIndex {
	t.Helper()
	db := testsvc.SQLite(t)
	store := kv.NewSQL(db)
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	ix := &seededIndex{settings: settings.NewStore(store, testsvc.SecretBox(t)), users: users.NewStore(db),
		vectors: vectors.NewEmbedded(db, vectors.EmbeddedOptions{}), catalog: cat}
	ix.jobs, err = jobs.New(jobs.Config{KV: store, Settings: ix.settings, Vectors: ix.vectors, Catalog: cat, Owner: "imap-similar-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ix.jobs.Close)
	return ix
}

// index creates the inboxd user of a Dovecot account and indexes its mail
// as inboxd does: the inbox initialisation job (Dovecot, offline
// embedder, vector store). It returns the user's id.
func (ix *seededIndex) index(t *testing.T, dv *testsvc.DovecotServer, name string, threads int) userid.ID {
	t.Helper()
	ctx := context.Background()
	u, err := ix.users.Create(ctx, users.NewUser{Email: name})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(map[string]any{"imap_server": dv.Host, "imap_port": dv.Port, "imap_security": "none",
		"imap_username": name, "imap_password": dv.Password(t, name)})
	patch, err := settings.DecodePatch(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.settings.Update(ctx, u.ID, patch); err != nil {
		t.Fatal(err)
	}
	if err := ix.jobs.Start(ctx, u.ID, jobs.Initialize); err != nil {
		t.Fatal(err)
	}
	if err := ix.jobs.Wait(ctx, u.ID, jobs.Initialize); err != nil {
		t.Fatal(err)
	}
	if n, err := ix.vectors.Count(ctx, u.ID); err != nil || n != threads {
		t.Fatalf("%s: %d threads indexed (%v), want %d", name, n, err, threads)
	}
	return u.ID
}

// host returns the host services of a call as user: settings from
// the Dovecot account (through sdktest's host, which enforces the plugin's
// needs), vectors from the index.
func (ix *seededIndex) host(t *testing.T, e *env, name string, user userid.ID) sdk.Host {
	t.Helper()
	st, err := ix.settings.Get(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	model, _, err := jobs.ModelFor(ix.catalog, st)
	if err != nil {
		t.Fatal(err)
	}
	emb, err := embed.New(model, st.EmbeddingAPIKey, embed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fake := &sdktest.FakeHost{Settings: e.settings(t, name)}
	return storeHost{Host: fake.Host(e.plugin.Needs...), user: user, store: ix.vectors, emb: emb}
}

// storeHost is a test host whose vector services go to a real
// vectors.Store for one inboxd user, as daemon/pluginhost serves them
// (vectors.Search with the user's embedder; payloads travel as JSON); the
// other services are the embedded Host's.
type storeHost struct {
	sdk.Host
	user  userid.ID
	store vectors.Store
	emb   embed.Embedder
}

func (h storeHost) VectorSearch(ctx context.Context, query string, limit int, exclude []string) ([]sdk.VectorHit, error) {
	hits, err := vectors.Search(ctx, h.store, h.emb, h.user, query, limit, exclude)
	if err != nil {
		return nil, err
	}
	out := make([]sdk.VectorHit, len(hits))
	for i, hit := range hits {
		raw, err := json.Marshal(hit.Payload)
		if err != nil {
			return nil, err
		}
		out[i] = sdk.VectorHit{ThreadID: hit.ID, Score: hit.Score}
		if err := json.Unmarshal(raw, &out[i].Payload); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (h storeHost) VectorCount(ctx context.Context) (int, error) { return h.store.Count(ctx, h.user) }

// TestFindSimilarThreadsSeeded: two users' mail in Dovecot, several topics
// of distinctive vocabulary each, indexed by the inbox initialisation into
// a real vector store with the offline embedder. For a message of a
// topic's thread (a reply, not the thread's root), find_similar_threads
// ranks exactly the user's other threads of that topic first, best first;
// the source thread is left out, the other user's threads (the same
// topics, near-identical text) never appear, and each neighbour's markdown
// is that thread.
func TestFindSimilarThreadsSeeded(t *testing.T) {
	const ann, ben = "ann@example.com", "ben@example.com"
	dv := testsvc.Dovecot(t, map[string]string{ann: "pw-ann", ben: "pw-ben"})
	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	e := &env{dv: dv, plugin: p}
	corpora := map[string]topicCorpus{ann: e.seedTopics(t, ann, "ann"), ben: e.seedTopics(t, ben, "ben")}
	ix := newSeededIndex(t)
	ids := map[string]userid.ID{}
	for _, name := range []string{ann, ben} {
		ids[name] = ix.index(t, dv, name, len(similarTopics)*threadsPerTopic)
	}

	for _, name := range []string{ann, ben} {
		other := map[string]string{ann: ben, ben: ann}[name]
		own := corpora[name]
		for _, topic := range similarTopics {
			t.Run(strings.SplitN(name, "@", 2)[0]+"/"+topic.name, func(t *testing.T) {
				source := fmt.Sprintf("%s-%s-0@example.org", strings.SplitN(name, "@", 2)[0], topic.name)
				want := map[string]bool{}
				for id, th := range own.threads {
					if th.topic == topic.name && id != source {
						want[id] = true
					}
				}
				rec := &recordingHost{Host: ix.host(t, e, name, ids[name])}
				res := callWith(t, p, "find_similar_threads", ids[name].String(), rec,
					map[string]any{"messageId": inboxID(own.seeds[topic.name]), "top_k": maxTopK})
				var got []similarThread
				if err := json.Unmarshal(res.Content, &got); err != nil || res.IsError {
					t.Fatalf("find_similar_threads = %s, %v", res.Content, err)
				}
				top := map[string]bool{} // the best len(want)
				for i, st := range got {
					if i < len(want) {
						top[st.ThreadID] = true
					}
					if st.ThreadID == source {
						t.Errorf("the source thread %s is among the neighbours", source)
					}
					if i > 0 && st.Score > got[i-1].Score {
						t.Errorf("not best first: %s (%.3f) after %s (%.3f)", st.ThreadID, st.Score, got[i-1].ThreadID, got[i-1].Score)
					}
					th, ok := own.threads[st.ThreadID]
					if !ok {
						t.Errorf("neighbour %s is not one of %s's threads", st.ThreadID, name)
						continue
					}
					if st.Subject != th.subject || !strings.Contains(st.Markdown, "# Email Thread") ||
						!strings.Contains(st.Markdown, th.subject) || !strings.Contains(st.Markdown, th.phrase) ||
						!strings.Contains(st.Markdown, name) || strings.Contains(st.Markdown, other) {
						t.Errorf("neighbour %s: subject %q, markdown not that thread's:\n%s", st.ThreadID, st.Subject, st.Markdown)
					}
				}
				if !maps.Equal(top, want) {
					t.Errorf("best %d neighbours of %s: %v, want the user's other %s threads %v", len(want), source, slices.Sorted(maps.Keys(top)), topic.name, slices.Sorted(maps.Keys(want)))
				}
				if len(got) != maxTopK {
					t.Errorf("%d neighbours, want top_k %d of the user's %d other threads", len(got), maxTopK, len(own.threads)-1)
				}
				if len(rec.searches) != 1 || !slices.Contains(rec.searches[0].exclude, source) {
					t.Errorf("searches %+v: want one, excluding the source thread %s", rec.searches, source)
				}
			})
		}
	}
}
