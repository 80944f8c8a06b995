package workflow

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Templates are prompts (system_prompt, trigger_prompt) and the string values
// of a tool step's arguments. A placeholder is "<<" NAME ">>" or
// "<<" NAME "." ARG ">>", where NAME is an identifier ([A-Za-z_][A-Za-z0-9_]*)
// and ARG is one or more characters other than '<', '>' and line breaks:
//
//	<<trigger_output>>             the triggering thread as markdown
//	<<trigger.FIELD>>              a field of the email: message_id, from, to, subject, date, body, uid, mailbox
//	<<step_output.STEP>>           the output of an earlier step, by id or name (saved as the id)
//	<<CURRENT_DATE>>               today in the user's timezone, "2006-01-02 (Monday)"
//	<<CURRENT_DATE.Europe/Paris>>  today in that IANA zone
//
// Text that does not have this shape ("a << b", "<<EOF") is literal. A
// placeholder with an unknown name or argument is refused when the workflow
// is saved. Rendering is a single pass: a value that itself contains
// "<<...>>" (an email, a step's output) is inserted as it is, never expanded.

// Placeholder names.
const (
	phTriggerOutput = "trigger_output"
	phTrigger       = "trigger"
	phStepOutput    = "step_output"
	phCurrentDate   = "CURRENT_DATE"
)

// currentDateLayout formats <<CURRENT_DATE>>.
const currentDateLayout = "2006-01-02 (Monday)"

// triggerFieldList names the fields accepted in <<trigger.FIELD>>, for errors.
const triggerFieldList = "message_id, from, to, subject, date, body, uid, mailbox"

func isTriggerField(f string) bool {
	switch f {
	case "message_id", "from", "to", "subject", "date", "body", "uid", "mailbox":
		return true
	}
	return false
}

// placeholder is one occurrence in a template: raw is tmpl[start:end].
type placeholder struct {
	start, end int
	name, arg  string
	hasArg     bool
}

func (p placeholder) raw(tmpl string) string { return tmpl[p.start:p.end] }

// scanPlaceholders finds the placeholders of tmpl, left to right, without
// overlaps.
func scanPlaceholders(tmpl string) []placeholder {
	var out []placeholder
	pos := 0
	for pos < len(tmpl) {
		i := strings.Index(tmpl[pos:], "<<")
		if i < 0 {
			break
		}
		start := pos + i
		if p, ok := parsePlaceholder(tmpl, start); ok {
			out = append(out, p)
			pos = p.end
			continue
		}
		pos = start + 1
	}
	return out
}

// parsePlaceholder parses the placeholder starting at tmpl[start:] ("<<").
func parsePlaceholder(tmpl string, start int) (placeholder, bool) {
	j := start + 2
	k := j
	for k < len(tmpl) && isIdentByte(tmpl[k], k == j) {
		k++
	}
	if k == j {
		return placeholder{}, false
	}
	p := placeholder{start: start, name: tmpl[j:k]}
	switch {
	case strings.HasPrefix(tmpl[k:], ">>"):
		p.end = k + 2
		return p, true
	case k < len(tmpl) && tmpl[k] == '.':
		a := k + 1
		e := a
		for e < len(tmpl) && !strings.HasPrefix(tmpl[e:], ">>") {
			switch tmpl[e] {
			case '<', '>', '\n', '\r':
				return placeholder{}, false
			}
			e++
		}
		if e == a || e >= len(tmpl) {
			return placeholder{}, false
		}
		p.arg, p.hasArg, p.end = tmpl[a:e], true, e+2
		return p, true
	}
	return placeholder{}, false
}

func isIdentByte(c byte, first bool) bool {
	switch {
	case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		return true
	case '0' <= c && c <= '9':
		return !first
	}
	return false
}

// stepResolver maps a reference in <<step_output.REF>> or step_to_check (an
// id or a name) to the id of an earlier step, or explains why it cannot.
type stepResolver func(ref string) (id string, msg string)

// checkTemplate validates tmpl and returns it with step references rewritten
// to step ids. resolve is nil where no step may be referred to (the trigger
// prompt). The error message names the offending placeholder.
func checkTemplate(tmpl string, resolve stepResolver) (string, string) {
	phs := scanPlaceholders(tmpl)
	if len(phs) == 0 {
		return tmpl, ""
	}
	var b strings.Builder
	last := 0
	for _, p := range phs {
		raw := p.raw(tmpl)
		repl := raw
		switch p.name {
		case phTriggerOutput:
			if p.hasArg {
				return "", "placeholder " + raw + ": trigger_output takes no argument"
			}
		case phTrigger:
			if !p.hasArg || !isTriggerField(p.arg) {
				return "", "unknown placeholder " + raw + " (trigger fields: " + triggerFieldList + ")"
			}
		case phCurrentDate:
			if p.hasArg {
				if _, err := loadZone(p.arg); err != nil {
					return "", "placeholder " + raw + ": unknown time zone " + strconv.Quote(p.arg)
				}
			}
		case phStepOutput:
			if !p.hasArg {
				return "", "placeholder " + raw + ": name a step, as <<step_output.STEP>>"
			}
			if resolve == nil {
				return "", "placeholder " + raw + ": no step output is available here"
			}
			id, msg := resolve(p.arg)
			if msg != "" {
				return "", "placeholder " + raw + ": " + msg
			}
			repl = "<<" + phStepOutput + "." + id + ">>"
		default:
			return "", "unknown placeholder " + raw
		}
		b.WriteString(tmpl[last:p.start])
		b.WriteString(repl)
		last = p.end
	}
	b.WriteString(tmpl[last:])
	return b.String(), ""
}

// loadZone loads an IANA zone; "Local" and "" are refused (the server's zone
// is not the user's).
func loadZone(name string) (*time.Location, error) {
	if name == "" || name == "Local" {
		return nil, errors.New("workflow: unknown time zone " + strconv.Quote(name))
	}
	return time.LoadLocation(name)
}

// renderEnv is what placeholders expand to in one run.
type renderEnv struct {
	trigger TriggerInput
	outputs map[string]string // step id -> output of a completed earlier step
	now     time.Time
	loc     *time.Location // the user's timezone; nil is UTC
}

// render expands the placeholders of tmpl in one pass. A placeholder that
// cannot be expanded (which validation prevents) is left as it is.
func render(tmpl string, env *renderEnv) string {
	phs := scanPlaceholders(tmpl)
	if len(phs) == 0 {
		return tmpl
	}
	var b strings.Builder
	last := 0
	for _, p := range phs {
		b.WriteString(tmpl[last:p.start])
		if v, ok := env.value(p); ok {
			b.WriteString(v)
		} else {
			b.WriteString(p.raw(tmpl))
		}
		last = p.end
	}
	b.WriteString(tmpl[last:])
	return b.String()
}

func (env *renderEnv) value(p placeholder) (string, bool) {
	switch p.name {
	case phTriggerOutput:
		return env.trigger.Markdown, !p.hasArg
	case phTrigger:
		if !p.hasArg || !isTriggerField(p.arg) {
			return "", false
		}
		e := env.trigger.Email
		if e == nil {
			return "", true
		}
		switch p.arg {
		case "message_id":
			return e.MessageID, true
		case "from":
			return e.From, true
		case "to":
			return e.To, true
		case "subject":
			return e.Subject, true
		case "date":
			return e.Date, true
		case "body":
			return e.Body, true
		case "uid":
			if e.UID == 0 {
				return "", true
			}
			return strconv.FormatUint(uint64(e.UID), 10), true
		case "mailbox":
			return e.Mailbox, true
		}
	case phStepOutput:
		v, ok := env.outputs[p.arg]
		return v, ok
	case phCurrentDate:
		loc := env.loc
		if p.hasArg {
			z, err := loadZone(p.arg)
			if err != nil {
				return "", false
			}
			loc = z
		}
		if loc == nil {
			loc = time.UTC
		}
		return env.now.In(loc).Format(currentDateLayout), true
	}
	return "", false
}
