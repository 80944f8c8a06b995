package mail

import "bytes"

// parserFields are the header fields ParseMessage reads itself: beyond
// MaxHeaders fields, the first of each of them is still kept.
var parserFields = [...][]byte{
	[]byte("subject"), []byte("from"), []byte("to"), []byte("cc"), []byte("reply-to"), []byte("date"),
	[]byte("message-id"), []byte("in-reply-to"), []byte("references"), []byte("mime-version"),
	[]byte("content-type"), []byte("content-transfer-encoding"), []byte("content-disposition"),
}

// headerOverflow counts the headers limitHeaderFields cut.
type headerOverflow struct {
	top   int // fields of the message's header when over the limit, else 0
	parts int // part headers over the limit
}

// limitHeaderFields returns raw without the header fields beyond max of
// each header block, except the first of each of parserFields, so that a
// flood of header fields (go-message keeps every field it reads, at some
// hundred bytes each) costs no memory. raw itself is returned when nothing
// is cut.
//
// A header block is the message's header, and the lines after any line
// starting with "--" (a multipart boundary, or something like one): a run
// of lines that read as header fields and their continuations, ended by a
// blank line or by a line that is not a field (where go-message stops
// reading too). Body text that merely looks like a header is cut only when
// more than max such lines follow a "--" line, which mail does not do.
func limitHeaderFields(raw []byte, max int) ([]byte, headerOverflow) {
	var (
		over headerOverflow
		out  []byte // raw without the cut lines, up to last
		last int    // raw[last:] is not yet in out
		cut  bool
	)
	drop := func(from, to int) {
		out = append(out, raw[last:from]...)
		last, cut = to, true
	}
	block := true // a header block starts at the next line
	for i := 0; i < len(raw); {
		if block {
			block = false
			end, n := headerBlock(raw, i, max, drop)
			if n > max {
				if i == 0 {
					over.top = n
				} else {
					over.parts++
				}
			}
			if end > i {
				i = end
				continue
			}
		}
		line, next := rawLine(raw, i)
		block = bytes.HasPrefix(line, []byte("--"))
		i = next
	}
	if !cut {
		return raw, over
	}
	return append(out, raw[last:]...), over
}

// headerBlock reads the header fields starting at raw[start:], calling drop
// for the lines of each field to cut, and returns where the block ends (the
// blank or non-field line that ends it) and how many fields it has.
func headerBlock(raw []byte, start, max int, drop func(from, to int)) (end, fields int) {
	var kept [len(parserFields)]bool // beyond max
	keep := true
	i := start
	for i < len(raw) {
		line, next := rawLine(raw, i)
		line = bytes.TrimSuffix(line, []byte("\r"))
		switch {
		case len(line) == 0:
			return i, fields
		case line[0] == ' ' || line[0] == '\t':
			if i == start {
				return i, fields // not a header: go-message refuses a leading space
			}
			// A continuation line shares its field's fate.
		default:
			colon := bytes.IndexByte(line, ':')
			if colon < 0 {
				return i, fields
			}
			fields++
			keep = fields <= max
			if !keep {
				key := bytes.TrimSpace(line[:colon])
				for k, f := range parserFields {
					if !kept[k] && bytes.EqualFold(key, f) {
						kept[k], keep = true, true
						break
					}
				}
			}
		}
		if !keep {
			drop(i, next)
		}
		i = next
	}
	return i, fields
}

// rawLine returns the line at raw[i:] without its "\n", and where the next
// line starts.
func rawLine(raw []byte, i int) (line []byte, next int) {
	j := bytes.IndexByte(raw[i:], '\n')
	if j < 0 {
		return raw[i:], len(raw)
	}
	return raw[i : i+j], i + j + 1
}
