package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// maxPlainLine bounds a line the server sends before STARTTLS (greeting,
// capabilities, the answer to STARTTLS).
const maxPlainLine = 64 << 10

// startTLSTag is the tag of the STARTTLS command.
const startTLSTag = "S0"

// tlsStarted is the greeting the client gets on the connection STARTTLS
// made: imapclient wants one, and the server sends none after STARTTLS. It
// names no capabilities, so imapclient asks for them afresh over TLS, as
// RFC 3501 6.2.1 wants of a client after STARTTLS.
const tlsStarted = "* OK TLS established\r\n"

// errStartTLSPreauth: a PREAUTH greeting leaves no room for STARTTLS, and
// going on would send everything in clear (RFC 3501 7.1.4).
var errStartTLSPreauth = errors.New("server sent PREAUTH on an unencrypted connection")

// startTLS reads the greeting on the plain connection, sends STARTTLS and
// does the TLS handshake itself, rather than leave it to
// imapclient.NewStartTLS: imapclient builds that TLS layer inside, where
// the line guard (see maxResponseLine) could not be put between TLS and
// imapclient. It returns the TLS connection, with the greeting imapclient
// expects in front. A greeting that is not OK is an error of stage
// "greeting" (rec holds it for the message); anything after it, of stage
// "starttls".
func startTLS(ctx context.Context, conn net.Conn, config *tls.Config) (_ net.Conn, stage string, _ error) {
	br := bufio.NewReaderSize(conn, 4096)
	greeting, err := readPlainLine(br)
	if err != nil {
		return nil, "greeting", err
	}
	upper := strings.ToUpper(greeting)
	switch {
	case strings.HasPrefix(upper, "* PREAUTH"):
		return nil, "starttls", errStartTLSPreauth
	case !strings.HasPrefix(upper, "* OK"):
		return nil, "greeting", errors.New("greeting is not OK")
	}
	if _, err := io.WriteString(conn, startTLSTag+" STARTTLS\r\n"); err != nil {
		return nil, "starttls", err
	}
	line, err := readPlainLine(br)
	for err == nil && strings.HasPrefix(line, "* ") {
		line, err = readPlainLine(br) // untagged data (CAPABILITY, ...): of no use before TLS
	}
	if err != nil {
		return nil, "starttls", err
	}
	tag, rest, _ := strings.Cut(line, " ")
	kind, text, _ := strings.Cut(rest, " ")
	switch t := imap.StatusResponseType(strings.ToUpper(kind)); {
	case tag != startTLSTag:
		return nil, "starttls", fmt.Errorf("answer with an unknown tag: %q", printable(line, 100))
	case t == imap.StatusResponseTypeNo, t == imap.StatusResponseTypeBad:
		return nil, "starttls", &imap.Error{Type: t, Text: printable(text, 200)}
	case t != imap.StatusResponseTypeOK:
		return nil, "starttls", fmt.Errorf("unexpected answer to STARTTLS: %q", printable(line, 100))
	}
	// The server speaks next only after the client's TLS hello: anything
	// already here was sent in clear after the OK, and would be taken for
	// a part of the encrypted session (a STARTTLS injection).
	if br.Buffered() > 0 {
		return nil, "starttls", errors.New("the server sent data after its answer to STARTTLS, before TLS")
	}
	tconn := tls.Client(conn, config)
	if err := tconn.HandshakeContext(ctx); err != nil {
		return nil, "starttls", err
	}
	return &greetedConn{Conn: tconn, greeting: strings.NewReader(tlsStarted)}, "", nil
}

// readPlainLine reads one line of at most maxPlainLine bytes, without its
// line break.
func readPlainLine(br *bufio.Reader) (string, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxPlainLine {
			return "", fmt.Errorf("a line over %d bytes before TLS", maxPlainLine)
		}
		switch {
		case err == nil:
			return strings.TrimRight(string(line), "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return "", io.ErrUnexpectedEOF
		default:
			return "", err
		}
	}
}

// greetedConn reads greeting first, then the connection.
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
}

func (c *greetedConn) Read(p []byte) (int, error) {
	if c.greeting.Len() > 0 {
		return c.greeting.Read(p)
	}
	return c.Conn.Read(p)
}
