package mail

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

func goldenThread() *Thread {
	cet := time.FixedZone("CET", 3600)
	return &Thread{
		Mailbox: "INBOX",
		Method:  ThreadClient,
		Messages: []*ThreadMessage{
			{UID: 1, ID: EncodeMessageID("INBOX", 1), Message: &Message{
				MessageID:   "root@example.com",
				Subject:     "Lunch on Thursday?",
				From:        []Address{{Name: "Alice Example", Email: "alice@example.com"}},
				To:          []Address{{Name: "Bob", Email: "bob@example.org"}, {Email: "carol@example.net"}},
				Date:        time.Date(2024, 1, 1, 21, 15, 0, 0, cet),
				BodyCleaned: "Shall we meet at the café on Thursday?\n\n# Agenda\n- food\n#hashtag stays\n\nAlice",
			}},
			{UID: 2, ID: EncodeMessageID("INBOX", 2), Message: &Message{
				MessageID:   "reply-1@example.org",
				Subject:     "Re: Lunch on Thursday?",
				From:        []Address{{Name: "Böb Müller", Email: "bob@example.org"}},
				To:          []Address{{Name: "Alice Example", Email: "alice@example.com"}},
				Cc:          []Address{{Name: "Dave, the Boss", Email: "dave@example.com"}},
				Date:        time.Date(2024, 1, 2, 10, 0, 0, 0, cet),
				BodyCleaned: "Thursday works for me.",
			}},
			{UID: 7, ID: EncodeMessageID("INBOX", 7), Message: &Message{
				From: []Address{{Email: "noreply@example.com"}},
			}},
		},
	}
}

func TestThreadMarkdownGolden(t *testing.T) {
	got := ThreadMarkdown(goldenThread())
	path := filepath.Join("testdata", "thread.golden.md")
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("ThreadMarkdown differs from %s (run with -update after checking):\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

func TestThreadMarkdownEmpty(t *testing.T) {
	want := "# Email Thread\n\n**Messages:** 0\n"
	if got := ThreadMarkdown(&Thread{}); got != want {
		t.Errorf("got %q", got)
	}
	if got := ThreadMarkdown(nil); got != want {
		t.Errorf("nil: got %q", got)
	}
}
