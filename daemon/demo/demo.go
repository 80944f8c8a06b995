// Package demo owns the built-in demonstration that `inboxd serve --demo`
// (and `make run`) starts: an in-process IMAP server with two demo users,
// each with a workflow of their own and mail arriving every few seconds, and
// a running commentary on the terminal. Nothing of it exists unless the demo
// is switched on.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// Stores are the daemon's stores the demo sets its users up in.
type Stores struct {
	Users     *users.Store
	Settings  *settings.Store
	Workflows *workflow.Store
}

// Options tunes the demo.
type Options struct {
	MailEvery time.Duration // default 5s per user
	Out       io.Writer     // the commentary
}

// account is one demo user: a daemon user and its IMAP mailbox.
type account struct {
	name, email, password string
	mem                   *imapmemserver.User
	id                    userid.ID
	workflowID            string
}

// Demo is a running demonstration.
type Demo struct {
	st       Stores
	opts     Options
	server   *imapserver.Server
	addr     *net.TCPAddr
	accounts []*account
}

// Start starts the IMAP server and sets the demo users up (idempotently: a
// restart reuses them). Run then delivers mail until ctx ends.
func Start(ctx context.Context, st Stores, opts Options) (*Demo, error) {
	if opts.MailEvery <= 0 {
		opts.MailEvery = 5 * time.Second
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	d := &Demo{st: st, opts: opts}
	mem := imapmemserver.New()
	for _, name := range names() {
		a := &account{name: name, email: email(name), password: "demo-" + name}
		a.mem = imapmemserver.NewUser(a.email, a.password)
		for _, box := range []string{"INBOX", "Demo"} {
			if err := a.mem.Create(box, nil); err != nil {
				return nil, fmt.Errorf("demo: create %s: %w", box, err)
			}
		}
		mem.AddUser(a.mem)
		d.accounts = append(d.accounts, a)
	}
	d.server = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: listen: %w", err)
	}
	d.addr = ln.Addr().(*net.TCPAddr)
	go d.server.Serve(ln) //nolint:errcheck // ends with Close
	for _, a := range d.accounts {
		if err := d.setUp(ctx, a); err != nil {
			d.server.Close()
			return nil, err
		}
	}
	return d, nil
}

// setUp creates (or finds) the demo user, its IMAP settings and its workflow.
func (d *Demo) setUp(ctx context.Context, a *account) error {
	u, err := d.st.Users.Create(ctx, users.NewUser{Email: a.email, DisplayName: "Demo " + a.name})
	if errors.Is(err, users.ErrExists) {
		u, err = d.st.Users.ByEmail(ctx, a.email)
	}
	if err != nil {
		return fmt.Errorf("demo: user %s: %w", a.email, err)
	}
	a.id = u.ID
	if u.Disabled { // retired by a run without the demo
		if err := d.st.Users.SetDisabled(ctx, a.id, false); err != nil {
			return fmt.Errorf("demo: enable %s: %w", a.email, err)
		}
	}
	patch := settings.Patch{}
	for k, v := range map[string]any{
		"imap_server": "127.0.0.1", "imap_port": d.addr.Port, "imap_security": "none",
		"imap_username": a.email, "imap_password": a.password,
	} {
		patch[k], _ = json.Marshal(v)
	}
	if err := d.st.Settings.Update(ctx, a.id, patch); err != nil {
		return fmt.Errorf("demo: settings of %s: %w", a.email, err)
	}
	wfs, err := d.st.Workflows.ListWorkflows(ctx, a.id)
	if err != nil {
		return fmt.Errorf("demo: workflows of %s: %w", a.email, err)
	}
	for _, wf := range wfs {
		if wf.Name == workflowName {
			a.workflowID = wf.ID
			return nil
		}
	}
	wf, err := d.st.Workflows.CreateWorkflow(ctx, a.id, demoWorkflow())
	if err != nil {
		return fmt.Errorf("demo: workflow of %s: %w", a.email, err)
	}
	a.workflowID = wf.ID
	return nil
}

const workflowName = "Demo: file invoices"

func names() []string { return []string{"alice", "bob"} }

func email(name string) string { return "demo-" + name + "@inboxd.invalid" }

// Retire disables the demo users a demo run left in the store, so that a
// daemon started without the demo neither polls nor shows anything of it.
func Retire(ctx context.Context, us *users.Store) error {
	for _, name := range names() {
		u, err := us.ByEmail(ctx, email(name))
		if errors.Is(err, users.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("demo: retire %s: %w", name, err)
		}
		if !u.Disabled {
			if err := us.SetDisabled(ctx, u.ID, true); err != nil {
				return fmt.Errorf("demo: retire %s: %w", name, err)
			}
		}
	}
	return nil
}

// demoWorkflow needs no LLM: a tool reads the thread, a checker stops runs
// that are not about an invoice, and a tool files the rest under "Demo".
func demoWorkflow() workflow.Workflow {
	return workflow.Workflow{
		Name:        workflowName,
		Description: "Reads each new mail, and files the ones about an invoice in the Demo folder.",
		Active:      true,
		Trigger:     &workflow.Trigger{Type: workflow.TriggerNewEmail},
		Steps: []workflow.Step{
			{Name: "read", Kind: workflow.KindTool, Tool: "imap-get_thread_for_message_id",
				Arguments: json.RawMessage(`{"messageId":"<<trigger.message_id>>"}`)},
			{Name: "invoice?", Kind: workflow.KindStopChecker, StepToCheck: "read",
				Mode: workflow.ContinueIfOutputContains, MatchValues: []string{"invoice"}},
			{Name: "file", Kind: workflow.KindTool, Tool: "imap-set_label",
				Arguments: json.RawMessage(`{"messageId":"<<trigger.message_id>>","label":"Demo"}`)},
		},
	}
}

// Run delivers a mail to each demo user every MailEvery and reports what
// the daemon made of it, until ctx ends; then it stops the IMAP server.
func (d *Demo) Run(ctx context.Context) error {
	defer d.server.Close()
	fmt.Fprintf(d.opts.Out, "demo: IMAP server on %s with users %s and %s; mail arrives every %s\n",
		d.addr, d.accounts[0].email, d.accounts[1].email, d.opts.MailEvery)
	deliver := time.NewTicker(d.opts.MailEvery)
	defer deliver.Stop()
	watch := time.NewTicker(500 * time.Millisecond)
	defer watch.Stop()
	reported := map[string]string{} // instance id -> last status reported
	n := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-deliver.C:
			n++
			for _, a := range d.accounts {
				subject := subjects()[rand.IntN(len(subjects()))]
				if strings.Contains(subject, "%") {
					subject = fmt.Sprintf(subject, n)
				}
				if err := d.deliver(a, n, subject); err != nil {
					return err
				}
				fmt.Fprintf(d.opts.Out, "demo: %-5s <- new mail %q\n", a.name, subject)
			}
		case <-watch.C:
			d.report(ctx, reported)
		}
	}
}

func subjects() []string {
	return []string{"Invoice 2026-%03d for your order", "Lunch on Friday?", "Your invoice is ready (%03d)", "Meeting notes", "Re: the proposal"}
}

func (d *Demo) deliver(a *account, n int, subject string) error {
	raw := fmt.Sprintf("From: Demo Sender <sender@example.com>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <demo-%s-%d-%d@inboxd.invalid>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello %s,\r\n\r\nthis is demo mail number %d: %s.\r\n",
		a.email, subject, time.Now().Format(time.RFC1123Z), a.name, n, time.Now().UnixNano(), a.name, n, subject)
	_, err := a.mem.Append("INBOX", literal{bytes.NewReader([]byte(raw)), int64(len(raw))}, &imap.AppendOptions{Time: time.Now()})
	if err != nil {
		return fmt.Errorf("demo: deliver to %s: %w", a.email, err)
	}
	return nil
}

// report prints each demo run when it is detected and when it ends.
func (d *Demo) report(ctx context.Context, reported map[string]string) {
	for _, a := range d.accounts {
		list, err := d.st.Workflows.ListInstances(ctx, a.id, a.workflowID, 20)
		if err != nil {
			continue
		}
		for i := len(list) - 1; i >= 0; i-- {
			in := list[i]
			if reported[in.ID] == in.Status {
				continue
			}
			subject := ""
			if in.Trigger.Email != nil {
				subject = in.Trigger.Email.Subject
			}
			switch in.Status {
			case workflow.StatusQueued, workflow.StatusRunning:
				if reported[in.ID] == "" {
					fmt.Fprintf(d.opts.Out, "demo: %-5s    mail detected, run started: %q\n", a.name, subject)
				}
			default:
				detail := ""
				if in.Error != "" {
					detail = " (" + in.Error + ")"
				}
				fmt.Fprintf(d.opts.Out, "demo: %-5s    run %s: %q%s\n", a.name, in.Status, subject, detail)
			}
			reported[in.ID] = in.Status
		}
	}
}

type literal struct {
	*bytes.Reader
	n int64
}

func (l literal) Size() int64 { return l.n }
