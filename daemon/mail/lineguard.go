package mail

import (
	"fmt"
	"net"
	"strconv"
)

// maxResponseLine bounds one line of a server's responses, literals not
// counted: a SEARCH answer of millions of UIDs fits. imapclient buffers a
// line's atoms and texts whole, with no limit of its own, so a server that
// streams a line without end would otherwise grow the daemon's memory at
// the link's rate until the poll's timeout (issue #8).
const maxResponseLine = 32 << 20

// lineGuardConn fails a read once the current response line, outside
// literals, passes max bytes. It follows the IMAP framing: a line ending in
// "{n}" (or "{n+}") announces n bytes of literal, which are not counted.
type lineGuardConn struct {
	net.Conn
	max     int64
	line    int64  // bytes of the current line so far
	literal int64  // bytes of an announced literal still to come
	tail    []byte // the current line's last bytes, for the announcement
}

const lineGuardTail = 24 // "{" + 20 digits + "+}" + "\r"

func guardLines(c net.Conn, max int64) net.Conn {
	return &lineGuardConn{Conn: c, max: max, tail: make([]byte, 0, lineGuardTail)}
}

func (c *lineGuardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for i := 0; i < n; {
		if c.literal > 0 {
			skip := min(c.literal, int64(n-i))
			c.literal -= skip
			i += int(skip)
			continue
		}
		b := p[i]
		i++
		if b == '\n' {
			c.literal = literalAnnounced(c.tail)
			c.line, c.tail = 0, c.tail[:0]
			continue
		}
		c.line++
		if c.line > c.max {
			return i, fmt.Errorf("mail: the server sent a response line over %d bytes", c.max)
		}
		if len(c.tail) == lineGuardTail {
			copy(c.tail, c.tail[1:])
			c.tail = c.tail[:lineGuardTail-1]
		}
		c.tail = append(c.tail, b)
	}
	return n, err
}

// literalAnnounced returns n if the line ends in "{n}" or "{n+}" (before an
// optional CR), else 0.
func literalAnnounced(tail []byte) int64 {
	if len(tail) > 0 && tail[len(tail)-1] == '\r' {
		tail = tail[:len(tail)-1]
	}
	if len(tail) < 3 || tail[len(tail)-1] != '}' {
		return 0
	}
	tail = tail[:len(tail)-1]
	if tail[len(tail)-1] == '+' {
		tail = tail[:len(tail)-1]
	}
	for i := len(tail) - 1; i >= 0; i-- {
		if tail[i] == '{' {
			n, err := strconv.ParseInt(string(tail[i+1:]), 10, 64)
			if err != nil || n < 0 {
				return 0
			}
			return n
		}
	}
	return 0
}
