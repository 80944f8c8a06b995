// Package mail owns IMAP access: dialing and login, connection testing, the
// classification of IMAP errors for users, a per-user connection pool,
// folder resolution by role, message parsing, threading, the thread-as-
// markdown format and contextual message ids.
//
// Nothing in this package logs except the Pool, at debug level through the
// logger it is given, and then only keys and reasons. No log record or error
// contains message content (parse warnings name at most a declared charset),
// and no error contains an account's password or OAuth token, even when a
// server echoes them back.
package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Security is how the connection to the IMAP server is protected.
type Security string

// Security modes. The strings are the values of the imap_security setting.
const (
	SecurityTLS      Security = "tls"      // implicit TLS (usually port 993)
	SecurityStartTLS Security = "starttls" // plain connect, then STARTTLS (usually port 143)
	SecurityNone     Security = "none"     // no encryption at all
)

// DefaultTimeout bounds connect and login when DialOptions.Timeout is zero.
const DefaultTimeout = 15 * time.Second

// Account is what is needed to reach and log in to one IMAP mailbox.
type Account struct {
	Server   string
	Port     int
	Security Security
	Username string
	Password string
	// OAuthToken, when set, is used with AUTHENTICATE XOAUTH2 instead of
	// LOGIN with Password.
	OAuthToken string
}

// String describes the account without its secrets, so that an Account
// printed with %v or %+v (or logged) does not leak them.
func (a Account) String() string {
	return fmt.Sprintf("{Server:%s Port:%d Security:%s Username:%s Password:%s OAuthToken:%s}",
		a.Server, a.Port, a.Security, a.Username, mask(a.Password), mask(a.OAuthToken))
}

// GoString is String for %#v.
func (a Account) GoString() string { return "mail.Account" + a.String() }

// LogValue keeps the secrets out of log/slog records.
func (a Account) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("server", a.Server), slog.Int("port", a.Port),
		slog.String("security", string(a.Security)), slog.String("username", a.Username),
		slog.String("password", mask(a.Password)), slog.String("oauth_token", mask(a.OAuthToken)))
}

func mask(secret string) string {
	if secret == "" {
		return ""
	}
	return "*****"
}

// DialOptions tunes Dial.
type DialOptions struct {
	// Timeout bounds the whole of DNS lookup, TCP connect, TLS handshake,
	// server greeting and login. Zero means DefaultTimeout. A deadline on the
	// context passed to Dial applies as well; the earlier one wins.
	Timeout time.Duration
	// TLSConfig is used for the tls and starttls modes. Nil means the system
	// roots. An empty ServerName is set to Account.Server. The config is
	// cloned, never modified.
	TLSConfig *tls.Config
	// Unilateral receives the server's unsolicited responses (EXISTS while
	// idling): the IDLE watcher sets it. Nil ignores them.
	Unilateral *imapclient.UnilateralDataHandler
	// ReadFailed, when set, is called once when a read of the connection
	// fails (the server closed it, a reset, or Close), on go-imap's reader
	// goroutine: it must not block, nor call the client's Close. An Idler
	// learns of a dropped connection this way.
	ReadFailed func(error)
}

// ErrorClass says which stage of reaching an IMAP server failed.
type ErrorClass string

// Error classes reported by Dial, TestConnection and Classify.
const (
	ClassDNS      ErrorClass = "dns"      // the host name does not resolve
	ClassConnect  ErrorClass = "connect"  // TCP connect refused or unreachable
	ClassTLS      ErrorClass = "tls"      // TLS handshake, certificate or STARTTLS failure
	ClassAuth     ErrorClass = "auth"     // the server rejected LOGIN / AUTHENTICATE
	ClassTimeout  ErrorClass = "timeout"  // the deadline passed (or the context was canceled)
	ClassProtocol ErrorClass = "protocol" // anything else: bad greeting, unexpected response, dropped connection
	// ClassConfig is an Account that fails Validate; no connection was attempted.
	ClassConfig ErrorClass = "config"
)

// Error is a classified IMAP access error. Its message is meant for users
// and never contains the account's password or token.
type Error struct {
	Class ErrorClass
	Op    string // the stage that failed: validate, dial, tls, starttls, greeting, login, select
	Err   error  // the user-facing cause; already free of secrets
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "mail: " + e.Op + ": " + string(e.Class) + " error"
	}
	return "mail: " + e.Op + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Message is the user-facing text without the "mail: op: " prefix, e.g.
// "connection refused by imap.example.com:993", for API answers and status
// pages.
func (e *Error) Message() string {
	if e.Err == nil {
		return string(e.Class) + " error"
	}
	return e.Err.Error()
}

// Classify reports the class of err: the class of an *Error in its chain, or
// a best guess from well-known error types. Errors it does not recognise are
// ClassProtocol; nil is "".
func Classify(err error) ErrorClass {
	if err == nil {
		return ""
	}
	var me *Error
	if errors.As(err, &me) {
		return me.Class
	}
	if isTimeout(err) || errors.Is(err, context.Canceled) {
		return ClassTimeout
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return ClassDNS
	}
	if isTLSError(err) {
		return ClassTLS
	}
	if isConnectError(err) {
		return ClassConnect
	}
	return ClassProtocol
}

// TestResult is the outcome of TestConnection, as the settings API reports it.
type TestResult struct {
	OK           bool       `json:"ok"`
	MailboxCount uint32     `json:"mailbox_count,omitempty"`
	Error        *TestError `json:"error,omitempty"`
}

// TestError is the failure part of a TestResult.
type TestError struct {
	Class   ErrorClass `json:"class"`
	Message string     `json:"message"`
}

// Validate checks the account's fields. The error names the offending field
// by its settings name, e.g. "imap_port: must be 1-65535"; only the first
// problem found is reported.
func (a Account) Validate() error {
	if err := validateServer(a.Server); err != nil {
		return err
	}
	if a.Port < 1 || a.Port > 65535 {
		return errors.New("imap_port: must be 1-65535")
	}
	switch a.Security {
	case SecurityTLS, SecurityStartTLS, SecurityNone:
	default:
		return errors.New(`imap_security: must be one of "tls", "starttls", "none"`)
	}
	if strings.TrimSpace(a.Username) == "" {
		return errors.New("imap_username: must not be empty")
	}
	if strings.ContainsAny(a.Username, "\r\n\x00") {
		return errors.New("imap_username: must not contain control characters")
	}
	return nil
}

func validateServer(s string) error {
	switch {
	case s == "":
		return errors.New("imap_server: must not be empty")
	case strings.Contains(s, "://"):
		return errors.New("imap_server: must be a host name without a scheme (e.g. imap.example.com)")
	case strings.ContainsAny(s, " \t\r\n"):
		return errors.New("imap_server: must not contain spaces")
	}
	if net.ParseIP(s) != nil {
		return nil
	}
	if strings.ContainsAny(s, ":/[]@") {
		return errors.New("imap_server: must be a host name or IP address, without port, path or user")
	}
	name := strings.TrimSuffix(s, ".")
	if len(name) == 0 || len(name) > 253 {
		return errors.New("imap_server: must be a valid host name")
	}
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("imap_server: must be a valid host name")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return errors.New("imap_server: must be a valid host name")
			}
		}
	}
	return nil
}

// Dial connects to the account's server with the account's security mode,
// waits for the greeting and logs in (LOGIN, or AUTHENTICATE XOAUTH2 when
// OAuthToken is set). ctx and opts.Timeout bound every step, including a
// server that accepts the connection and never speaks. The returned client is
// logged in and no longer bound by the timeout; the caller must Close (or
// Logout) it. Errors are *Error.
func Dial(ctx context.Context, acct Account, opts DialOptions) (*imapclient.Client, error) {
	if err := acct.Validate(); err != nil {
		return nil, &Error{Class: ClassConfig, Op: "validate", Err: err}
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	d := newDialer(ctx, acct, timeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return d.dial(ctx, opts)
}

func newDialer(ctx context.Context, acct Account, timeout time.Duration) *dialer {
	// Report the budget actually available: ctx may end before timeout.
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout = max(left, 0)
		}
	}
	return &dialer{
		acct:    acct,
		addr:    net.JoinHostPort(acct.Server, strconv.Itoa(acct.Port)),
		timeout: timeout.Round(time.Millisecond),
		secrets: secretsOf(acct),
	}
}

// dialer carries one Dial attempt's state.
type dialer struct {
	acct    Account
	addr    string
	timeout time.Duration
	secrets []string
	expired atomic.Bool // the watchdog closed the connection
}

func (d *dialer) dial(ctx context.Context, opts DialOptions) (*imapclient.Client, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, d.dialError(ctx, err)
	}

	// imapclient manages the connection's read and write deadlines itself,
	// so a deadline set on conn would be overwritten: the watchdog closes
	// the connection when ctx ends instead, which unblocks every step.
	stop := context.AfterFunc(ctx, func() {
		d.expired.Store(true)
		conn.Close()
	})
	fail := func(c *imapclient.Client, e *Error) (*imapclient.Client, error) {
		stop()
		if c != nil {
			c.Close()
		} else {
			conn.Close()
		}
		return nil, e
	}

	var tlsConfig *tls.Config
	if d.acct.Security != SecurityNone {
		tlsConfig = d.tlsConfig(opts.TLSConfig)
	}
	clientOpts := &imapclient.Options{TLSConfig: tlsConfig, UnilateralDataHandler: opts.Unilateral}

	// The recorder keeps the server's first line: imapclient reports a bad
	// or refusing greeting only as flattened text (or, racily, as a closed
	// connection), and the line itself is what tells a user what is there.
	rec := &greetingRecorder{}
	if opts.ReadFailed != nil {
		conn = &readFailConn{Conn: conn, failed: opts.ReadFailed}
	}
	var c *imapclient.Client
	switch d.acct.Security {
	case SecurityTLS:
		tconn := tls.Client(conn, tlsConfig)
		if err := tconn.HandshakeContext(ctx); err != nil {
			return fail(nil, d.stageError(ctx, "tls", err))
		}
		c = imapclient.New(guardLines(rec.wrap(tconn), maxResponseLine), clientOpts)
	case SecurityStartTLS:
		tconn, stage, err := startTLS(ctx, rec.wrap(conn), tlsConfig)
		if err != nil {
			if stage == "greeting" {
				return fail(nil, d.greetingError(ctx, rec, err))
			}
			return fail(nil, d.stageError(ctx, "starttls", err))
		}
		c = imapclient.New(guardLines(tconn, maxResponseLine), clientOpts)
	default:
		c = imapclient.New(guardLines(rec.wrap(conn), maxResponseLine), clientOpts)
	}

	if err := c.WaitGreeting(); err != nil {
		return fail(c, d.greetingError(ctx, rec, err))
	}
	rec.stop()

	if c.State() == imap.ConnStateNotAuthenticated {
		var err error
		if d.acct.OAuthToken != "" {
			sc := &xoauth2Client{username: d.acct.Username, token: d.acct.OAuthToken}
			err = c.Authenticate(sc)
			if err != nil && len(sc.serverDetail) > 0 {
				err = &detailError{err: err, detail: printable(string(sc.serverDetail), 300)}
			}
		} else {
			err = c.Login(d.acct.Username, d.acct.Password).Wait()
		}
		if err != nil {
			return fail(c, d.stageError(ctx, "login", err))
		}
	}

	if !stop() {
		// The watchdog fired (or is firing): the connection is gone.
		c.Close()
		return nil, d.timeoutError(ctx, "login")
	}
	return c, nil
}

func (d *dialer) tlsConfig(base *tls.Config) *tls.Config {
	var cfg *tls.Config
	if base != nil {
		cfg = base.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = d.acct.Server
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

// dialError classifies a failure of DNS lookup or TCP connect.
func (d *dialer) dialError(ctx context.Context, err error) *Error {
	if ctx.Err() != nil || isTimeout(err) {
		return d.timeoutError(ctx, "dial")
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		msg := fmt.Sprintf("cannot resolve host %q", d.acct.Server)
		switch {
		case dnsErr.IsNotFound:
			msg += ": no such host"
		case dnsErr.Err != "":
			msg += ": " + dnsErr.Err
		}
		return d.newError(ClassDNS, "dial", msg, err)
	}
	var msg string
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		msg = "connection refused by " + d.addr
	case errors.Is(err, syscall.EHOSTUNREACH):
		msg = "host unreachable: " + d.addr
	case errors.Is(err, syscall.ENETUNREACH):
		msg = "network unreachable: " + d.addr
	default:
		msg = fmt.Sprintf("cannot connect to %s: %v", d.addr, unwrapOpError(err))
	}
	return d.newError(ClassConnect, "dial", msg, err)
}

// stageError classifies a failure after the TCP connection was established.
func (d *dialer) stageError(ctx context.Context, op string, err error) *Error {
	if d.expired.Load() || ctx.Err() != nil || isTimeout(err) {
		return d.timeoutError(ctx, op)
	}
	var ie *imap.Error
	isIMAPErr := errors.As(err, &ie)
	switch op {
	case "tls":
		return d.newError(ClassTLS, op, d.tlsMessage(err), err)
	case "starttls":
		if isTLSError(err) {
			return d.newError(ClassTLS, op, d.tlsMessage(err), err)
		}
		if isIMAPErr {
			return d.newError(ClassTLS, op, "server refused STARTTLS: "+statusText(ie)+
				` (the server may not offer STARTTLS here; try security "tls" or "none")`, err)
		}
		return d.newError(ClassProtocol, op, d.protocolMessage("STARTTLS", err), err)
	case "login":
		if isIMAPErr {
			return d.newError(ClassAuth, op, "login rejected: "+statusText(ie)+detailOf(err), err)
		}
		return d.newError(ClassProtocol, op, d.protocolMessage("login", err), err)
	}
	return d.newError(Classify(err), op, err.Error(), err)
}

// greetingError classifies a failure before or at the server's greeting.
func (d *dialer) greetingError(ctx context.Context, rec *greetingRecorder, err error) *Error {
	if d.expired.Load() || ctx.Err() != nil || isTimeout(err) {
		return d.timeoutError(ctx, "greeting")
	}
	line, complete := rec.firstLine()
	upper := strings.ToUpper(line)
	var msg string
	switch {
	case line == "":
		msg = d.addr + " closed the connection without a greeting"
	case strings.HasPrefix(upper, "* BYE") || strings.HasPrefix(upper, "* NO") || strings.HasPrefix(upper, "* BAD"):
		msg = "server refused the connection: " + line[2:]
	case complete && (strings.HasPrefix(upper, "* OK") || strings.HasPrefix(upper, "* PREAUTH")):
		msg = fmt.Sprintf("malformed greeting from %s: %v", d.addr, err)
	default:
		msg = fmt.Sprintf("unexpected greeting from %s (is this an IMAP server?): %q", d.addr, line)
	}
	return d.newError(ClassProtocol, "greeting", msg, err)
}

// greetingRecorder keeps the first bytes the server sends.
type greetingRecorder struct {
	mu      sync.Mutex
	buf     []byte
	stopped bool
}

const greetingRecordMax = 200

type recordingConn struct {
	net.Conn
	rec *greetingRecorder
}

func (c recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.rec.record(p[:n])
	}
	return n, err
}

// readFailConn reports its first failed read (DialOptions.ReadFailed).
type readFailConn struct {
	net.Conn
	failed func(error)
	once   sync.Once
}

func (c *readFailConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() { c.failed(err) })
	}
	return n, err
}

func (r *greetingRecorder) wrap(c net.Conn) net.Conn { return recordingConn{Conn: c, rec: r} }

func (r *greetingRecorder) record(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped && len(r.buf) < greetingRecordMax {
		r.buf = append(r.buf, p[:min(len(p), greetingRecordMax-len(r.buf))]...)
	}
}

func (r *greetingRecorder) stop() {
	r.mu.Lock()
	r.stopped = true
	r.buf = nil
	r.mu.Unlock()
}

// firstLine returns the first line received, printable and trimmed, and
// whether it was complete (ended in a line break).
func (r *greetingRecorder) firstLine() (line string, complete bool) {
	r.mu.Lock()
	b := r.buf
	r.mu.Unlock()
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b, complete = b[:i], true
	}
	return printable(string(bytes.TrimRight(b, "\r")), greetingRecordMax), complete
}

// printable replaces control characters and invalid UTF-8 in server text
// and cuts it to at most limit bytes.
func printable(s string, limit int) string {
	if len(s) > limit {
		s = s[:limit]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

func (d *dialer) tlsMessage(err error) string {
	var rhe tls.RecordHeaderError
	var cve *tls.CertificateVerificationError
	var hne x509.HostnameError
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &rhe):
		return fmt.Sprintf("TLS handshake with %s failed: the server did not answer with TLS"+
			` (is this a plain IMAP port? try security "starttls" or "none")`, d.addr)
	case errors.As(err, &hne):
		return fmt.Sprintf("certificate of %s is not valid for %q: %v", d.addr, hne.Host, hne.Error())
	case errors.As(err, &uae):
		return fmt.Sprintf("certificate of %s is not trusted: %v", d.addr, uae.Error())
	case errors.As(err, &cie):
		return fmt.Sprintf("certificate of %s is invalid: %v", d.addr, cie.Error())
	case errors.As(err, &cve):
		return fmt.Sprintf("certificate of %s could not be verified: %v", d.addr, cve.Err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return fmt.Sprintf("TLS handshake with %s failed: the server closed the connection", d.addr)
	}
	return fmt.Sprintf("TLS handshake with %s failed: %v", d.addr, err)
}

func (d *dialer) protocolMessage(stage string, err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, net.ErrClosed) {
		return fmt.Sprintf("%s closed the connection during %s", d.addr, stage)
	}
	return fmt.Sprintf("unexpected response from %s during %s: %v", d.addr, stage, err)
}

func (d *dialer) timeoutError(ctx context.Context, op string) *Error {
	stage := map[string]string{
		"dial":     "while connecting",
		"tls":      "during the TLS handshake",
		"starttls": "during STARTTLS",
		"greeting": "while waiting for the server greeting",
		"login":    "while logging in",
		"select":   "while opening INBOX",
	}[op]
	if stage == "" {
		stage = "during " + op
	}
	var msg string
	cause := ctx.Err()
	switch {
	case errors.Is(cause, context.Canceled):
		msg = fmt.Sprintf("canceled %s (%s)", stage, d.addr)
	case cause == nil: // a read or write deadline inside imapclient
		cause = os.ErrDeadlineExceeded
		msg = fmt.Sprintf("timed out %s (%s did not answer)", stage, d.addr)
	default:
		msg = fmt.Sprintf("timed out after %s %s (%s)", d.timeout, stage, d.addr)
	}
	return &Error{Class: ClassTimeout, Op: op, Err: &causeError{msg: msg, cause: cause}}
}

// newError builds an *Error whose message and cause are free of the
// account's secrets.
func (d *dialer) newError(class ErrorClass, op, msg string, cause error) *Error {
	return &Error{Class: class, Op: op, Err: redactedCause(msg, cause, d.secrets)}
}

// causeError is a user-facing message over the error it was made from.
type causeError struct {
	msg   string
	cause error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.cause }

// redactedCause removes secrets from msg; a cause whose own text contains a
// secret is replaced by a redacted copy (an *imap.Error keeps its type) or
// dropped, so that no unwrapping reveals the secret.
func redactedCause(msg string, cause error, secrets []string) error {
	msg = redact(msg, secrets)
	if cause != nil && redact(cause.Error(), secrets) != cause.Error() {
		var ie *imap.Error
		if errors.As(cause, &ie) {
			cp := *ie
			cp.Text = redact(ie.Text, secrets)
			cause = &cp
		} else {
			cause = nil
		}
	}
	return &causeError{msg: msg, cause: cause}
}

const redacted = "[REDACTED]"

func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	return s
}

// secretsOf lists every form in which the account's secrets go over the
// wire, longest first, so that a server echoing any of them is caught.
func secretsOf(a Account) []string {
	var s []string
	if a.OAuthToken != "" {
		ir := xoauth2Response(a.Username, a.OAuthToken)
		s = append(s, base64.StdEncoding.EncodeToString(ir), a.OAuthToken)
	}
	if a.Password != "" {
		// As an IMAP quoted string carries it (backslashes first).
		quoted := strings.ReplaceAll(strings.ReplaceAll(a.Password, `\`, `\\`), `"`, `\"`)
		if quoted != a.Password {
			s = append(s, quoted)
		}
		s = append(s, a.Password)
	}
	return s
}

// detailError adds the server's SASL error detail (XOAUTH2 sends a JSON
// challenge before failing) to an authentication error.
type detailError struct {
	err    error
	detail string
}

func (e *detailError) Error() string { return e.err.Error() + " (" + e.detail + ")" }
func (e *detailError) Unwrap() error { return e.err }

func detailOf(err error) string {
	var de *detailError
	if errors.As(err, &de) {
		return " (server detail: " + de.detail + ")"
	}
	return ""
}

func statusText(ie *imap.Error) string {
	var b strings.Builder
	b.WriteString(string(ie.Type))
	if ie.Code != "" {
		b.WriteString(" [" + string(ie.Code) + "]")
	}
	if ie.Text != "" {
		b.WriteString(" " + ie.Text)
	}
	// "NO [AUTHENTICATIONFAILED] x" reads better as "[AUTHENTICATIONFAILED] x".
	s := b.String()
	if ie.Type == imap.StatusResponseTypeNo {
		s = strings.TrimPrefix(strings.TrimPrefix(s, "NO"), " ")
	}
	return s
}

func unwrapOpError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// imapclient flattens some errors to text (e.g. before the greeting).
	return strings.Contains(err.Error(), "i/o timeout")
}

func isTLSError(err error) bool {
	var (
		rhe tls.RecordHeaderError
		ae  tls.AlertError
		cve *tls.CertificateVerificationError
		hne x509.HostnameError
		uae x509.UnknownAuthorityError
		cie x509.CertificateInvalidError
	)
	return errors.As(err, &rhe) || errors.As(err, &ae) || errors.As(err, &cve) ||
		errors.As(err, &hne) || errors.As(err, &uae) || errors.As(err, &cie) ||
		strings.HasPrefix(err.Error(), "tls: ")
}

func isConnectError(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// xoauth2Client is a go-sasl Client for the XOAUTH2 mechanism (Google,
// Microsoft). go-sasl itself dropped its implementation.
type xoauth2Client struct {
	username, token string
	serverDetail    []byte // the JSON error challenge, if the server sent one
}

func xoauth2Response(username, token string) []byte {
	return []byte("user=" + username + "\x01auth=Bearer " + token + "\x01\x01")
}

func (c *xoauth2Client) Start() (mech string, ir []byte, err error) {
	return "XOAUTH2", xoauth2Response(c.username, c.token), nil
}

// Next answers the server's error challenge with the empty response the
// mechanism requires; the server then fails the command.
func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	c.serverDetail = append([]byte(nil), challenge...)
	return []byte{}, nil
}

// TestConnection dials and logs in to the account, opens INBOX read-only and
// reports its number of messages, then logs out. The whole check is bounded
// by ctx and opts.Timeout. It never returns the password or token.
func TestConnection(ctx context.Context, acct Account, opts DialOptions) TestResult {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	opts.Timeout = timeout

	c, err := Dial(ctx, acct, opts)
	if err != nil {
		return failedResult(err)
	}
	d := newDialer(ctx, acct, timeout)
	stop := context.AfterFunc(ctx, func() {
		d.expired.Store(true)
		c.Close()
	})
	defer stop()
	defer c.Close()

	// EXAMINE is SELECT without side effects (no \Recent or \Seen changes).
	data, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		if d.expired.Load() || ctx.Err() != nil {
			return failedResult(d.timeoutError(ctx, "select"))
		}
		var ie *imap.Error
		if errors.As(err, &ie) {
			return failedResult(d.newError(ClassProtocol, "select", "cannot open INBOX: "+statusText(ie), err))
		}
		return failedResult(d.newError(ClassProtocol, "select", d.protocolMessage("SELECT INBOX", err), err))
	}
	// A failed LOGOUT does not make the check fail: the mailbox was reached.
	_ = c.Logout().Wait()
	return TestResult{OK: true, MailboxCount: data.NumMessages}
}

func failedResult(err error) TestResult {
	var me *Error
	if errors.As(err, &me) {
		return TestResult{Error: &TestError{Class: me.Class, Message: me.Message()}}
	}
	return TestResult{Error: &TestError{Class: Classify(err), Message: err.Error()}}
}
