package jobs

import (
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
)

func TestDetectLanguage(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"Hi Tom, thanks for the update. I will send you the report tomorrow and we can talk about it.", "en"},
		{"Hoi Tom, bedankt voor je bericht. Ik stuur je het rapport morgen en dan kunnen we het bespreken.", "nl"},
		{"Hallo Tom, danke für die Nachricht. Ich schicke dir den Bericht morgen und wir können darüber sprechen.", "de"},
		{"Bonjour Tom, merci pour le message. Je vous envoie le rapport demain et nous pourrons en parler.", "fr"},
		{"Hola Tom, gracias por el mensaje. Te envío el informe mañana y podemos hablar de eso con calma.", "es"},
		{"Ciao Tom, grazie per il messaggio. Ti mando il rapporto domani e ne possiamo parlare con calma.", "it"},
		{"OK", LanguageUnknown},
		{"", LanguageUnknown},
		{"12345 67890 https://example.com", LanguageUnknown},
	} {
		if got := detectLanguage(tc.text); got != tc.want {
			t.Errorf("detectLanguage(%.30q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

func ref(folder string, uid uint32, id, inReplyTo, refs string, hours int) msgRef {
	h := mail.Header{MessageID: id, Date: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(hours) * time.Hour)}
	if inReplyTo != "" {
		h.InReplyTo = []string{inReplyTo}
	}
	if refs != "" {
		h.References = []string{refs}
	}
	return msgRef{folder: folder, uid: imap.UID(uid), hdr: h}
}

// TestBuildThreads: threads span folders, a message in two folders counts
// once, the thread id is the root whichever messages were listed, and each
// folder contributes its newest threads.
func TestBuildThreads(t *testing.T) {
	refs := []msgRef{
		ref("INBOX", 1, "root1", "", "", 1),
		ref("Sent", 1, "reply1", "root1", "root1", 2), // UID 1 in both folders
		ref("All", 7, "reply1", "root1", "root1", 2),  // the same message in All Mail
		ref("INBOX", 2, "root2", "", "", 3),
		ref("INBOX", 3, "late2", "mid2", "root2", 10), // its parent is not listed
		ref("Sent", 2, "own", "", "", 5),
		ref("INBOX", 4, "", "", "", 6), // no ids at all
	}
	threads := buildThreads(refs, 100)
	byID := map[string]*threadRef{}
	for _, th := range threads {
		byID[th.id] = th
	}
	if len(threads) != 4 || byID["root1"] == nil || byID["root2"] == nil || byID["own"] == nil {
		t.Fatalf("threads: %d %v", len(threads), byID)
	}
	if r := byID["root1"]; len(r.msgs) != 2 || !slices.Equal(r.folders, []string{"All", "INBOX", "Sent"}) {
		t.Errorf("root1: %d messages in %v", len(r.msgs), r.folders)
	}
	// Only the late reply listed: still named by its root.
	if th := buildThreads([]msgRef{refs[4]}, 100); th[0].id != "root2" {
		t.Errorf("late reply alone: %q", th[0].id)
	}
	var anon string
	for id := range byID {
		if id != "root1" && id != "root2" && id != "own" {
			anon = id
		}
	}
	if again := buildThreads(refs, 100); !slices.ContainsFunc(again, func(t *threadRef) bool { return t.id == anon }) {
		t.Errorf("id of a thread without ids is not stable: %q", anon)
	}

	sel := selectThreads(threads, []string{"Sent", "INBOX"}, 1)
	var ids []string
	for _, th := range sel {
		ids = append(ids, th.id)
	}
	// Sent's newest: own (5h); INBOX's newest: root2 (10h). Newest first.
	if !slices.Equal(ids, []string{"root2", "own"}) {
		t.Errorf("selected %v", ids)
	}
	if sel := selectThreads(threads, []string{"Sent", "INBOX"}, 10); len(sel) != 4 {
		t.Errorf("all selected: %d", len(sel))
	}
	if th := buildThreads(refs[:2], 1); len(th[0].msgs) != 1 || th[0].msgs[0].hdr.MessageID != "reply1" {
		t.Errorf("capped thread keeps the newest: %+v", th[0].msgs)
	}
}

func TestUserLabels(t *testing.T) {
	boxes := []mail.MailboxInfo{
		{Name: "INBOX"},
		{Name: "Sent", Attrs: []imap.MailboxAttr{imap.MailboxAttrSent}},
		{Name: "[Gmail]", Attrs: []imap.MailboxAttr{"\\NoSelect"}},
		{Name: "[Gmail]/All Mail", Attrs: []imap.MailboxAttr{imap.MailboxAttrAll}},
		{Name: "Deleted Items"}, // Trash by its well-known name
		{Name: "Clients"},
		{Name: "Clients/Acme"},
		{Name: "Receipts", Attrs: []imap.MailboxAttr{imap.MailboxAttrHasNoChildren}},
	}
	if got := userLabels(boxes); !slices.Equal(got, []string{"Clients", "Clients/Acme", "Receipts"}) {
		t.Errorf("labels %v", got)
	}
}

func TestModelFor(t *testing.T) {
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		st    settings.Settings
		want  string
		saved bool
		err   bool
	}{
		{"no key: offline", settings.Settings{}, "offline-hash-384", false, false},
		{"an OpenAI key: the default", settings.Settings{EmbeddingAPIKey: "sk-x"}, "text-embedding-3-large", false, false},
		{"a Voyage key", settings.Settings{EmbeddingAPIKey: "pa-x"}, "voyage-3.5", false, false},
		{"chosen", settings.Settings{EmbeddingModel: "text-embedding-3-small"}, "text-embedding-3-small", true, false},
		{"unknown", settings.Settings{EmbeddingModel: "nope"}, "", true, true},
	} {
		m, chosen, err := ModelFor(cat, tc.st)
		if (err != nil) != tc.err || m.Key != tc.want || chosen != tc.saved {
			t.Errorf("%s: %q chosen=%v err=%v", tc.name, m.Key, chosen, err)
		}
	}
	keys := UserKeys(cat, settings.Settings{EmbeddingModel: "voyage-3.5", EmbeddingAPIKey: "k"})
	if !keys(embed.ProviderVoyage) || keys(embed.ProviderOpenAI) {
		t.Error("a chosen model's key counts for its provider only")
	}
	if UserKeys(cat, settings.Settings{}) != nil {
		t.Error("no key, no providers")
	}
}

func TestParseCron(t *testing.T) {
	for spec, ok := range map[string]bool{"0 */6 * * *": true, "@every 1h": true, "*/30 * * * * *": true, "bogus": false, "": false} {
		if _, err := parseCron(spec); (err == nil) != ok {
			t.Errorf("parseCron(%q): %v", spec, err)
		}
	}
}
