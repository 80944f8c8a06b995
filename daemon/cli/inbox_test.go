package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// withStores runs f on the stores the configuration in vars names.
func withStores(t *testing.T, vars map[string]string, f func(st *stores)) {
	t.Helper()
	cfg, err := loadConfig(Env{Getenv: func(k string) string { return vars[k] }}, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStores(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f(st)
}

func TestInboxInit(t *testing.T) {
	vars := dataEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"inbox"}, "missing subcommand"},
		{[]string{"inbox", "frob"}, `unknown subcommand "frob"`},
		{[]string{"inbox", "init"}, "needs --user"},
		{[]string{"inbox", "init", "--user", "x", "extra"}, "takes no arguments"},
	} {
		if code, _, stderr := run(t, vars, tc.args...); code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("inboxd %v: exit %d, stderr %q", tc.args, code, stderr)
		}
	}

	imap := testsvc.MemIMAP(t, map[string]string{"alice": "alice-pw"})
	for i := 0; i < 3; i++ {
		imap.Deliver(t, "alice", []byte(fmt.Sprintf("From: Bob <bob@x.example>\r\nTo: alice@a.example\r\nSubject: Note %d\r\n"+
			"Date: %s\r\nMessage-ID: <n%d@x.example>\r\n\r\nA note about the piano, number %d.\r\n", i, time.Now().Add(-time.Duration(i)*time.Hour).Format(time.RFC1123Z), i, i)))
	}
	for _, email := range []string{"alice@a.example", "nomail@a.example"} {
		if code, _, stderr := run(t, vars, "user", "add", "--email", email); code != 0 {
			t.Fatalf("user add: %q", stderr)
		}
	}
	var aliceID string
	withStores(t, vars, func(st *stores) {
		u, err := st.users.Lookup(context.Background(), "alice@a.example")
		if err != nil {
			t.Fatal(err)
		}
		aliceID = u.ID.String()
		raw, _ := json.Marshal(map[string]any{"imap_server": imap.Host, "imap_port": imap.Port, "imap_security": "none",
			"imap_username": "alice", "imap_password": "alice-pw"})
		p, err := settings.DecodePatch(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := settings.NewStore(st.kv, st.box).Update(context.Background(), u.ID, p); err != nil {
			t.Fatal(err)
		}
	})

	code, stdout, stderr := run(t, vars, "inbox", "init", "--user", "alice@a.example", "--wait")
	if code != 0 || !strings.Contains(stdout, "completed: 3 threads") {
		t.Fatalf("inbox init --wait: exit %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "[##############################] 3/3 threads") || !strings.Contains(stderr, "threads/s") {
		t.Errorf("no progress bar on stderr: %q", stderr)
	}
	withStores(t, vars, func(st *stores) {
		n, err := vectors.NewEmbedded(st.sql, vectors.EmbeddedOptions{}).Count(context.Background(), userid.MustParse(aliceID))
		if err != nil || n != 3 {
			t.Errorf("%d points, %v", n, err)
		}
	})
	// Again, by id, without the bar: the threads are stored already.
	code, stdout, stderr = run(t, vars, "inbox", "init", "--user", aliceID)
	if code != 0 || !strings.Contains(stdout, "completed: 3 threads") || strings.Contains(stderr, "threads/s") {
		t.Errorf("inbox init again: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr := run(t, vars, "inbox", "init", "--user", "nomail@a.example"); code != 1 || !strings.Contains(stderr, "IMAP account is not set up") {
		t.Errorf("a user without IMAP: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t, vars, "inbox", "init", "--user", "ghost@a.example"); code != 1 || !strings.Contains(stderr, "--user ghost@a.example") {
		t.Errorf("unknown user: exit %d, %q", code, stderr)
	}
}
