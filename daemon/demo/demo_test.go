package demo

import (
	"bytes"
	"context"
	"github.com/emersion/go-imap/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDemoSetsUpUsersAndDeliversMail(t *testing.T) {
	ctx := context.Background()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	st := Stores{Users: users.NewStore(db), Settings: settings.NewStore(kv.NewSQL(db), box), Workflows: workflow.NewStore(db)}
	var out syncBuffer
	d, err := Start(ctx, st, Options{MailEvery: 50 * time.Millisecond, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "<- new mail") < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "alice <- new mail") || !strings.Contains(out.String(), "bob   <- new mail") {
		t.Fatalf("commentary:\n%s", out.String())
	}
	for _, a := range d.accounts {
		s, err := st.Settings.Get(ctx, a.id)
		if err != nil || !s.IMAPComplete() || s.IMAPPort != d.addr.Port {
			t.Errorf("%s settings: %+v %v", a.name, s, err)
		}
		box, err := a.mem.Status("INBOX", &imap.StatusOptions{NumMessages: true})
		if err != nil || box.NumMessages == nil || *box.NumMessages < 2 {
			t.Errorf("%s INBOX: %+v %v", a.name, box, err)
		}
	}
	ids, err := st.Workflows.UsersWithActiveTrigger(ctx, workflow.TriggerNewEmail)
	if err != nil || len(ids) != 2 {
		t.Fatalf("users with active new_email workflows: %v %v", ids, err)
	}

	// A restart with the demo reuses the users and workflows.
	if _, err := Start(ctx, st, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, a := range d.accounts {
		if wfs, _ := st.Workflows.ListWorkflows(ctx, a.id); len(wfs) != 1 {
			t.Errorf("%s has %d workflows after a second start", a.name, len(wfs))
		}
	}
	// Without the demo, its users are retired: nothing of it is polled.
	if err := Retire(ctx, st.Users); err != nil {
		t.Fatal(err)
	}
	if ids, _ := st.Workflows.UsersWithActiveTrigger(ctx, workflow.TriggerNewEmail); len(ids) != 0 {
		t.Errorf("retired demo users still polled: %v", ids)
	}
}
