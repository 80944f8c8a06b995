package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/fakeqdrant"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// stores are the real stores a test's Managers share (a restart is a new
// Manager over the same stores).
type stores struct {
	db       *sqldb.DB
	kv       kv.Store
	settings *settings.Store
	users    *users.Store
	vectors  vectors.Store
	catalog  *embed.Catalog
	reg      *prometheus.Registry
	// qdrant is the fake behind a Qdrant backend (nil for the embedded one),
	// and tenancy that backend's tenancy.
	qdrant  *fakeqdrant.Server
	tenancy vectors.Tenancy
}

// vectorBackend is a vectors.Store the jobs write to.
type vectorBackend struct {
	name    string
	tenancy vectors.Tenancy // "" for the embedded store
}

// vectorBackends are the backends the initialisation is tested on: the
// embedded store and Qdrant (the fake) in both tenancy modes.
var vectorBackends = []vectorBackend{
	{name: "embedded"},
	{name: "qdrant-collection", tenancy: vectors.TenancyCollection},
	{name: "qdrant-payload", tenancy: vectors.TenancyPayload},
}

// open returns the backend's store over db (the embedded one) or over a
// fresh fake Qdrant, with that fake.
func (vb vectorBackend) open(t testing.TB, db *sqldb.DB) (vectors.Store, *fakeqdrant.Server) {
	t.Helper()
	if vb.tenancy == "" {
		return vectors.NewEmbedded(db, vectors.EmbeddedOptions{}), nil
	}
	f := fakeqdrant.New(t)
	b, err := vectors.Open(f.URL()+"?tenancy="+string(vb.tenancy), nil, vectors.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, f
}

// newStores returns stores with the embedded vector store.
func newStores(t testing.TB) *stores { return newStoresOn(t, vectorBackends[0]) }

// newStoresOn returns fresh stores with vb's vector store.
func newStoresOn(t testing.TB, vb vectorBackend) *stores {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := sqldb.Open(ctx, "sqlite://"+filepath.Join(dir, "inboxd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	key, err := secretbox.LoadOrCreateKey(filepath.Join(dir, "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	store := kv.NewSQL(db)
	vs, f := vb.open(t, db)
	return &stores{
		db: db, kv: store, settings: settings.NewStore(store, box), users: users.NewStore(db),
		vectors: vs, catalog: cat, reg: prometheus.NewRegistry(), qdrant: f, tenancy: vb.tenancy,
	}
}

// manager builds a Manager over s; run starts its Run loop until the test
// ends (or until the returned stop is called).
func (s *stores) manager(t testing.TB, run bool, tune func(*Config)) (*Manager, func()) {
	t.Helper()
	cfg := Config{
		KV: s.kv, Settings: s.settings, Vectors: s.vectors, Catalog: s.catalog, Users: s.users,
		LLM:    llm.NewOpenAI(llm.Options{MaxRetries: -1}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: s.reg,
		Owner: "test-" + randomHex(), LeaseTTL: 3 * time.Second, RecoverEvery: 200 * time.Millisecond,
	}
	if tune != nil {
		tune(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !run {
		t.Cleanup(m.Close)
		return m, m.Close
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return m, stop
}

// newUser creates a user row with IMAP settings for a Dovecot account.
func (s *stores) newUser(t testing.TB, email string, dc *testsvc.DovecotServer, login string, extra map[string]any) userid.ID {
	t.Helper()
	ctx := context.Background()
	u, err := s.users.Create(ctx, users.NewUser{Email: email})
	if err != nil {
		t.Fatal(err)
	}
	patch := map[string]any{}
	if dc != nil {
		patch = map[string]any{
			"imap_server": dc.Host, "imap_port": dc.Port, "imap_security": "none",
			"imap_username": login, "imap_password": dc.Password(t, login),
		}
	}
	for k, v := range extra {
		patch[k] = v
	}
	s.setSettings(t, u.ID, patch)
	return u.ID
}

func (s *stores) setSettings(t testing.TB, id userid.ID, fields map[string]any) {
	t.Helper()
	raw, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	p, err := settings.DecodePatch(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.settings.Update(context.Background(), id, p); err != nil {
		t.Fatal(err)
	}
}

func (s *stores) count(t testing.TB, id userid.ID) int {
	t.Helper()
	n, err := s.vectors.Count(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// mailbox appends messages as one Dovecot user over one connection.
type mailbox struct {
	t testing.TB
	c *imapclient.Client
}

func openMailbox(t testing.TB, dc *testsvc.DovecotServer, login string) *mailbox {
	t.Helper()
	c, err := imapclient.DialInsecure(dc.Addr(), &imapclient.Options{Dialer: &net.Dialer{Timeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(login, dc.Password(t, login)).Wait(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &mailbox{t: t, c: c}
}

func (mb *mailbox) create(folder string) {
	mb.t.Helper()
	if err := mb.c.Create(folder, nil).Wait(); err != nil {
		mb.t.Fatalf("create %s: %v", folder, err)
	}
}

// msg is one message to append.
type msg struct {
	folder              string
	id, inReplyTo, refs string
	from, to, subject   string
	date                time.Time
	body                string
}

func (mb *mailbox) append(m msg) {
	mb.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s>\r\n", m.from, m.to, m.subject, m.date.Format(time.RFC1123Z), m.id)
	if m.inReplyTo != "" {
		fmt.Fprintf(&b, "In-Reply-To: <%s>\r\n", m.inReplyTo)
	}
	if m.refs != "" {
		fmt.Fprintf(&b, "References: %s\r\n", m.refs)
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	b.WriteString(strings.ReplaceAll(m.body, "\n", "\r\n"))
	raw := []byte(b.String())
	cmd := mb.c.Append(m.folder, int64(len(raw)), &imap.AppendOptions{Time: m.date})
	if _, err := cmd.Write(raw); err != nil {
		mb.t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		mb.t.Fatal(err)
	}
	if _, err := cmd.Wait(); err != nil {
		mb.t.Fatalf("append to %s: %v", m.folder, err)
	}
}

// corpus describes a seeded mailbox: what a correct initialisation stores.
type corpus struct {
	threads     map[string]bool // thread ids (root Message-IDs) in the window
	replied     map[string]int  // threads with a user reply, by language
	longThread  string          // the thread longer than the model's input limit
	longWord    string          // words only the long thread's last part contains
	uniqueWords string          // words only this user's mail contains
}

// vocabularies keep the two users' mail apart in content.
func vocabulary(user string) []string {
	if user == "a" {
		return strings.Fields("invoice garden piano bicycle kitchen roof tax holiday contract furniture painting window boiler insurance mortgage ladder")
	}
	return strings.Fields("telescope nebula comet galaxy orbit asteroid eclipse meteor satellite planet rocket lunar crater quasar pulsar nova")
}

// seed fills a Dovecot user's INBOX and Sent: n threads from contacts
// (English first, the last nl of them Dutch), the user's replies in Sent
// for three in four, a contact's follow-up for one in five, five threads
// the user started, a long thread, and two messages older than the
// window. Message-IDs carry the prefix, so each user's threads are known.
func seed(t testing.TB, dc *testsvc.DovecotServer, login, prefix, addr string, n, nl int) corpus {
	t.Helper()
	mb := openMailbox(t, dc, login)
	words := vocabulary(prefix)
	c := corpus{threads: map[string]bool{}, replied: map[string]int{}, uniqueWords: strings.Join(words[:4], " ")}
	now := time.Now().Add(-time.Hour)
	domain := strings.SplitN(addr, "@", 2)[1]
	spacing := min(40*time.Hour, 150*24*time.Hour/time.Duration(n)) // all within the window
	for i := 0; i < n; i++ {
		w1, w2 := words[i%len(words)], words[(i*7+3)%len(words)]
		contact := fmt.Sprintf("Contact %d <contact%d@clients-%s>", i%7, i%7, domain)
		root := fmt.Sprintf("%s-root-%d@%s", prefix, i, domain)
		date := now.Add(-time.Duration(n-i) * spacing)
		lang := "en"
		body := fmt.Sprintf("Hello,\n\ncould you please send me the details about the %s and the %s? I would like to know if we can meet next week about it.\n\nThanks, Contact %d\n", w1, w2, i%7)
		reply := fmt.Sprintf("Hi Contact %d,\n\nthanks for your message about the %s. I will send you the %s details tomorrow, and yes, we can meet.\n\nCheers,\nMe\n\nOn %s Contact wrote:\n> could you please send me the details\n", i%7, w1, w2, date.Format("Mon 2 Jan"))
		if i >= n-nl {
			lang = "nl"
			body = fmt.Sprintf("Hallo,\n\nkun je mij de gegevens over de %s en het %s sturen? Ik wil graag weten of we volgende week kunnen afspreken.\n\nGroeten, Contact %d\n", w1, w2, i%7)
			reply = fmt.Sprintf("Hoi Contact %d,\n\nbedankt voor je bericht over de %s. Ik stuur je de gegevens van het %s morgen, en we kunnen zeker afspreken.\n\nGroeten,\nIk\n", i%7, w1, w2)
		}
		subject := fmt.Sprintf("%s and %s (%d)", w1, w2, i)
		mb.append(msg{folder: "INBOX", id: root, from: contact, to: addr, subject: subject, date: date, body: body})
		c.threads[root] = true
		if i%4 != 3 {
			rid := fmt.Sprintf("%s-reply-%d@%s", prefix, i, domain)
			mb.append(msg{folder: "Sent", id: rid, inReplyTo: root, refs: "<" + root + ">", from: "Me <" + addr + ">", to: contact,
				subject: "Re: " + subject, date: date.Add(time.Hour), body: reply})
			c.replied[lang]++
			if i%5 == 0 {
				mb.append(msg{folder: "INBOX", id: fmt.Sprintf("%s-followup-%d@%s", prefix, i, domain), inReplyTo: rid,
					refs: "<" + root + "> <" + rid + ">", from: contact, to: addr, subject: "Re: " + subject,
					date: date.Add(2 * time.Hour), body: "Great, thank you! See you then.\n\n> I will send it tomorrow\n"})
			}
		}
	}
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("%s-own-%d@%s", prefix, i, domain)
		mb.append(msg{folder: "Sent", id: id, from: "Me <" + addr + ">", to: "someone@elsewhere.example",
			subject: "Question about the " + words[(i+5)%len(words)], date: now.Add(-time.Duration(i+1) * 30 * time.Hour),
			body: "Hello, is the " + words[(i+5)%len(words)] + " still available? Thanks.\n"})
		c.threads[id] = true
	}
	// A thread far longer than the offline model's 8,000-character input.
	c.longThread = fmt.Sprintf("%s-long@%s", prefix, domain)
	c.longWord = map[string]string{"a": "quokka zanzibar expedition lagoon", "b": "wombat madagascar safari baobab"}[prefix]
	var long strings.Builder
	for long.Len() < 24000 {
		fmt.Fprintf(&long, "This is paragraph %d of the annual report, with figures and remarks about nothing in particular.\n\n", long.Len()/100)
	}
	// The last part, far beyond the input limit: a truncating embedder
	// would never see it.
	tail := strings.Fields(c.longWord)
	for i := 0; long.Len() < 32000; i++ {
		fmt.Fprintf(&long, "Appendix %d: the %s of the %s went on to the %s near the %s.\n\n", i, tail[i%4], tail[(i+1)%4], tail[(i+2)%4], tail[(i+3)%4])
	}
	mb.append(msg{folder: "INBOX", id: c.longThread, from: "Reports <reports@" + domain + ">", to: addr, subject: "Annual report",
		date: now.Add(-3 * time.Hour), body: long.String()})
	c.threads[c.longThread] = true
	// Older than the six-month window: never stored.
	for i := 0; i < 2; i++ {
		old := now.AddDate(0, -8, -i)
		mb.append(msg{folder: "INBOX", id: fmt.Sprintf("%s-old-%d@%s", prefix, i, domain), from: "old@" + domain, to: addr,
			subject: "Old news " + strconv.Itoa(i), date: old, body: "This is old.\n"})
	}
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
