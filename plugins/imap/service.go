package imap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
)

// notConfigured is the tool error of a user without IMAP settings.
const notConfigured = "IMAP is not configured: set imap_server, imap_username and imap_password in settings"

// Connection cache defaults: a plugin process keeps a few logged-in
// connections per user for a short while, so that an agent's burst of tool
// calls logs in once, and never holds a user's connections for long.
const (
	defaultPerUser   = 3
	defaultMaxIdle   = 2 * time.Minute
	defaultIdleCheck = 30 * time.Second
)

// accountSettings is what the tools need of the calling user's settings.
type accountSettings struct {
	Server               string
	Port                 int
	Security             string
	Username             string
	Password             string
	DraftCreationEnabled bool
}

// vectorHit is one thread found by the host's vector search.
type vectorHit struct {
	ThreadID string
	Score    float32
	Payload  map[string]any
}

// hostServices is what the tools need of the host, scoped to one call.
type hostServices interface {
	settings(ctx context.Context) (accountSettings, error)
	vectorSearch(ctx context.Context, query string, limit int, exclude []string) ([]vectorHit, error)
}

// call is one tool call: the calling user (the connection cache key) and
// the host services scoped to the call.
type call struct {
	user string
	host hostServices
}

// errNoUser: the call carries no user (a host bug; never a user's fault).
var errNoUser = errors.New("imap: no user in the call context")

// toolError is a failure the model should read as the tool's answer (an
// error result), not a failure of the plugin or of the connection.
type toolError struct{ msg string }

func (e *toolError) Error() string { return e.msg }

func toolErrorf(format string, a ...any) error { return &toolError{msg: fmt.Sprintf(format, a...)} }

// asToolError returns the message of a tool-level error in err's chain.
func asToolError(err error) (string, bool) {
	var te *toolError
	if errors.As(err, &te) {
		return te.msg, true
	}
	return "", false
}

// options tunes a server; zero values mean the defaults.
type options struct {
	Pool mail.PoolOptions
	Now  func() time.Time
}

// server holds the plugin's state: the connection cache, made on the first
// tool call (so that building the plugin to describe its tools opens
// nothing) and kept as long as the plugin process lives.
type server struct {
	poolOpts mail.PoolOptions
	now      func() time.Time

	poolOnce sync.Once
	pool     *mail.Pool
	poolErr  error
}

func newServer(opts options) *server {
	po := opts.Pool
	if po.PerUser <= 0 {
		po.PerUser = defaultPerUser
	}
	if po.MaxIdle <= 0 {
		po.MaxIdle = defaultMaxIdle
	}
	if po.IdleCheck == 0 {
		po.IdleCheck = defaultIdleCheck
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &server{poolOpts: po, now: now}
}

// connections returns the connection cache, making it on first use.
func (s *server) connections() (*mail.Pool, error) {
	s.poolOnce.Do(func() {
		s.pool, s.poolErr = mail.NewPool(s.poolOpts)
		if s.poolErr != nil {
			s.poolErr = fmt.Errorf("imap: connection cache: %w", s.poolErr)
		}
	})
	return s.pool, s.poolErr
}

// close closes the cached connections (and makes later calls fail).
func (s *server) close() error {
	pool, err := s.connections()
	if err != nil {
		return err
	}
	return pool.Close()
}

// account turns the user's settings into an IMAP account, with the
// daemon's defaults (security tls; port 993 for tls, else 143).
func account(st accountSettings) (mail.Account, error) {
	if strings.TrimSpace(st.Server) == "" || strings.TrimSpace(st.Username) == "" || st.Password == "" {
		return mail.Account{}, toolErrorf("%s", notConfigured)
	}
	sec := mail.Security(st.Security)
	if sec == "" {
		sec = mail.SecurityTLS
	}
	port := st.Port
	if port == 0 {
		port = 993
		if sec != mail.SecurityTLS {
			port = 143
		}
	}
	acct := mail.Account{Server: st.Server, Port: port, Security: sec, Username: st.Username, Password: st.Password}
	if err := acct.Validate(); err != nil {
		return mail.Account{}, toolErrorf("IMAP settings are invalid: %s", userMessage(err))
	}
	return acct, nil
}

// userMessage is an error's text without the "mail: op:" prefix when it is
// a classified mail error.
func userMessage(err error) string {
	var me *mail.Error
	if errors.As(err, &me) {
		return me.Message()
	}
	return err.Error()
}

// withConn runs f on a logged-in connection of the calling user's account.
// imapclient's commands take no context, so if ctx ends before f returns,
// the connection is closed under f. The connection goes back to the cache
// only after a clean run; after any error it is dropped, since its state
// (the selected mailbox, a command cut short) is unknown.
func (s *server) withConn(ctx context.Context, cl call, f func(c *imapclient.Client, st accountSettings) error) error {
	return s.withConnIf(ctx, cl, nil, f)
}

// withConnIf is withConn with a check of the settings before connecting:
// an error from check is returned as it is.
func (s *server) withConnIf(ctx context.Context, cl call, check func(accountSettings) error, f func(c *imapclient.Client, st accountSettings) error) error {
	if cl.user == "" {
		return errNoUser
	}
	st, err := cl.host.settings(ctx)
	if err != nil {
		return fmt.Errorf("imap: read settings: %w", err)
	}
	acct, err := account(st)
	if err != nil {
		return err
	}
	if check != nil {
		if err := check(st); err != nil {
			return err
		}
	}
	pool, err := s.connections()
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx, cl.user, acct)
	if err != nil {
		return dialError(err, acct)
	}
	c := conn.Client()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err = f(c, st)
	if !stop() {
		conn.Discard()
		return fmt.Errorf("imap: %w (connection closed)", context.Cause(ctx))
	}
	if err != nil {
		conn.Discard()
		if _, ok := asToolError(err); ok {
			return err
		}
		return fmt.Errorf("imap: %w", err)
	}
	conn.Release()
	return nil
}

// dialError sorts a failure to reach or log in to the server: settings the
// user must fix are tool errors, anything else (unreachable, TLS, timeout)
// an error.
func dialError(err error, acct mail.Account) error {
	switch mail.Classify(err) {
	case mail.ClassConfig:
		return toolErrorf("IMAP settings are invalid: %s", userMessage(err))
	case mail.ClassAuth:
		return toolErrorf("IMAP login to %s:%d failed (%s): check imap_username and imap_password in settings",
			acct.Server, acct.Port, userMessage(err))
	}
	return fmt.Errorf("imap: connect to %s:%d: %w", acct.Server, acct.Port, err)
}

// serverRefusal reports the status response of a command the server
// answered NO (or BAD) to.
func serverRefusal(err error) (*imap.Error, bool) {
	var ie *imap.Error
	if errors.As(err, &ie) && (ie.Type == imap.StatusResponseTypeNo || ie.Type == imap.StatusResponseTypeBad) {
		return ie, true
	}
	return nil, false
}

// selectMailbox opens mailbox (read-only unless write), always anew so that
// its message count is current. A refusal is a tool error naming the folder.
func selectMailbox(c *imapclient.Client, mailbox string, write bool) (*imap.SelectData, error) {
	data, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: !write}).Wait()
	if err != nil {
		if ie, ok := serverRefusal(err); ok {
			return nil, toolErrorf("folder %q not found or cannot be opened (server said: %s); get_all_labels lists the folders", mailbox, ie.Text)
		}
		return nil, fmt.Errorf("select %q: %w", mailbox, err)
	}
	return data, nil
}

// decodeMessageID checks a messageId argument.
func decodeMessageID(id string) (string, imap.UID, error) {
	if strings.TrimSpace(id) == "" {
		return "", 0, toolErrorf("messageId is required: pass the messageId a list or search tool returned (e.g. \"SU5CT1g:42\")")
	}
	mailbox, uid, err := mail.DecodeMessageID(id)
	if err != nil {
		return "", 0, toolErrorf("unknown message id %q: not an id this plugin returned (%s); ids look like \"SU5CT1g:42\"",
			clip(id, 80), strings.TrimPrefix(err.Error(), "mail: "))
	}
	return mailbox, uid, nil
}

// notFound is the tool error of a message id whose message is gone.
func notFound(id, mailbox string, uid imap.UID) error {
	return toolErrorf("unknown message id %q: no message with UID %d in folder %q (it may have been moved or deleted)", id, uid, mailbox)
}

// flexInt is an integer argument that also accepts a numeric string ("10"),
// as models sometimes send.
type flexInt struct {
	set bool
	v   int
}

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*f = flexInt{}
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		s = strings.TrimSpace(str)
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n != float64(int64(n)) || n > 1<<31 || n < -(1<<31) {
		// encoding/json adds the field name to this error.
		return &json.UnmarshalTypeError{Value: clip(string(b), 40), Type: reflect.TypeFor[int]()}
	}
	*f = flexInt{set: true, v: int(n)}
	return nil
}

// intArg returns an integer argument: def when absent, at most max (larger
// values are capped), a tool error below 1.
func intArg(name string, f flexInt, def, max int) (int, error) {
	if !f.set {
		return def, nil
	}
	if f.v < 1 {
		return 0, toolErrorf("%s must be at least 1 (at most %d), got %d", name, max, f.v)
	}
	return min(f.v, max), nil
}

// clip cuts s to at most n runes, marking the cut.
func clip(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + "…"
		}
		i++
	}
	return s
}
