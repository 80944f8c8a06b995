package workflow

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/robfig/cron/v3"

	"github.com/inboxd/inboxd/daemon/tools"
)

// Limits of a workflow definition.
const (
	MaxNameLen        = 200
	MaxDescriptionLen = 10000
	MaxSteps          = 100
	MaxPromptLen      = 100000
	MaxCycles         = 50 // the largest max_cycles of an agent step
	maxStepIDLen      = 100
	maxModelLen       = 200
	maxFilterEntries  = 1000
	maxMatchValues    = 100
)

// NewID returns a new random (version 4) UUID string: the id of a workflow,
// step, instance or step run.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("workflow: crypto/rand: %v", err)) // never fails on Linux
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func verr(field, format string, args ...any) error {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Validate reports the first problem of w as a *ValidationError, or nil.
func Validate(w Workflow) error {
	_, err := Normalize(w)
	return err
}

// Normalize validates w and returns its canonical form, the one the store
// saves; w itself is not modified. A problem is a *ValidationError naming the
// field ("name", "steps[2].system_prompt", "trigger.cron" ...).
//
// Normalisation trims names, assigns a new id (a UUID) to each step without
// one, names unnamed steps "step N", drops the fields that do not apply to a
// step's kind, defaults an agent's max_cycles to DefaultMaxCycles, rewrites
// every reference to a step by name (in step_to_check and in
// <<step_output.STEP>>) to the step's id, lower-cases and de-duplicates
// filter rules, and gives a new_email trigger non-nil rule lists.
//
// Step ids and names are unique within the workflow, and no name equals
// another step's id, so a reference is never ambiguous. A step refers only to
// earlier steps.
func Normalize(w Workflow) (Workflow, error) {
	out := Workflow{
		ID:          w.ID,
		UserID:      w.UserID,
		Name:        strings.TrimSpace(w.Name),
		Description: strings.TrimSpace(w.Description),
		Active:      w.Active,
		CreatedAt:   w.CreatedAt,
		UpdatedAt:   w.UpdatedAt,
	}
	switch n := utf8.RuneCountInString(out.Name); {
	case n == 0:
		return Workflow{}, verr("name", "is required")
	case n > MaxNameLen:
		return Workflow{}, verr("name", "is longer than %d characters", MaxNameLen)
	}
	if utf8.RuneCountInString(out.Description) > MaxDescriptionLen {
		return Workflow{}, verr("description", "is longer than %d characters", MaxDescriptionLen)
	}
	if len(w.Steps) > MaxSteps {
		return Workflow{}, verr("steps", "has %d steps; at most %d are allowed", len(w.Steps), MaxSteps)
	}
	steps, err := normalizeSteps(w.Steps)
	if err != nil {
		return Workflow{}, err
	}
	out.Steps = steps
	if w.Trigger != nil {
		t, err := normalizeTrigger(*w.Trigger)
		if err != nil {
			return Workflow{}, err
		}
		out.Trigger = &t
	}
	return out, nil
}

// RemapStepIDs normalises w and gives every step a new id, rewriting the
// references to the old ids (step_to_check, <<step_output.ID>> in prompts and
// in tool arguments): for importing an exported workflow next to the
// original. Problems are *ValidationError, as from Normalize.
func RemapStepIDs(w Workflow) (Workflow, error) {
	n, err := Normalize(w)
	if err != nil {
		return Workflow{}, err
	}
	newIDs := make(map[string]string, len(n.Steps))
	for _, s := range n.Steps {
		newIDs[s.ID] = NewID()
	}
	resolve := func(ref string) (string, string) {
		if id, ok := newIDs[ref]; ok {
			return id, ""
		}
		return "", "unknown step " + strconv.Quote(ref)
	}
	for i := range n.Steps {
		s := &n.Steps[i]
		f := fmt.Sprintf("steps[%d]", i)
		s.ID = newIDs[s.ID]
		if s.SystemPrompt != "" {
			p, msg := checkTemplate(s.SystemPrompt, resolve)
			if msg != "" {
				return Workflow{}, verr(f+".system_prompt", "%s", msg)
			}
			s.SystemPrompt = p
		}
		if s.StepToCheck != "" {
			s.StepToCheck = newIDs[s.StepToCheck]
		}
		if s.Kind == KindTool {
			if s.Arguments, err = normalizeArguments(f+".arguments", s.Arguments, resolve); err != nil {
				return Workflow{}, err
			}
		}
	}
	return Normalize(n)
}

// normalizeSteps checks ids and names first (so that references can be
// resolved), then each step.
func normalizeSteps(in []Step) ([]Step, error) {
	steps := make([]Step, len(in))
	byID := make(map[string]int, len(in))
	byName := make(map[string]int, len(in))
	for i, s := range in {
		f := fmt.Sprintf("steps[%d]", i)
		s.ID = strings.TrimSpace(s.ID)
		if s.ID == "" {
			s.ID = NewID()
		} else if msg := checkStepID(s.ID); msg != "" {
			return nil, verr(f+".id", "%s", msg)
		}
		if j, dup := byID[s.ID]; dup {
			return nil, verr(f+".id", "%q is also the id of steps[%d]", s.ID, j)
		}
		byID[s.ID] = i
		s.Name = strings.TrimSpace(s.Name)
		if s.Name == "" {
			s.Name = "step " + strconv.Itoa(i+1)
		}
		switch {
		case utf8.RuneCountInString(s.Name) > MaxNameLen:
			return nil, verr(f+".name", "is longer than %d characters", MaxNameLen)
		case strings.ContainsAny(s.Name, "<>\r\n"):
			return nil, verr(f+".name", "must not contain '<', '>' or line breaks")
		}
		if j, dup := byName[s.Name]; dup {
			return nil, verr(f+".name", "%q is also the name of steps[%d]", s.Name, j)
		}
		byName[s.Name] = i
		steps[i] = s
	}
	for i, s := range steps {
		if j, ok := byID[s.Name]; ok && j != i {
			return nil, verr(fmt.Sprintf("steps[%d].name", i), "%q is the id of steps[%d]", s.Name, j)
		}
	}
	for i := range steps {
		resolve := func(ref string) (string, string) {
			j, ok := byID[ref]
			if !ok {
				j, ok = byName[ref]
			}
			switch {
			case !ok:
				return "", "unknown step " + strconv.Quote(ref)
			case j == i:
				return "", "a step cannot refer to itself"
			case j > i:
				return "", fmt.Sprintf("step %q is a later step (steps[%d]); only earlier steps can be referred to", ref, j)
			}
			return steps[j].ID, ""
		}
		s, err := normalizeStep(fmt.Sprintf("steps[%d]", i), steps[i], resolve)
		if err != nil {
			return nil, err
		}
		steps[i] = s
	}
	return steps, nil
}

// checkStepID allows ids that can appear in <<step_output.ID>> and in URLs.
func checkStepID(id string) string {
	if len(id) > maxStepIDLen {
		return fmt.Sprintf("is longer than %d characters", maxStepIDLen)
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return "may contain only letters, digits and - _ . :"
		}
	}
	return ""
}

// normalizeStep checks one step (its id and name already are) and keeps
// only the fields of its kind.
func normalizeStep(f string, s Step, resolve stepResolver) (Step, error) {
	out := Step{ID: s.ID, Name: s.Name, Kind: strings.TrimSpace(s.Kind)}
	model := strings.TrimSpace(s.Model)
	if len(model) > maxModelLen || strings.ContainsAny(model, " \t\r\n") {
		return Step{}, verr(f+".model", "is not a model name")
	}
	prompt := func() (string, error) {
		if strings.TrimSpace(s.SystemPrompt) == "" {
			return "", verr(f+".system_prompt", "is required")
		}
		if len(s.SystemPrompt) > MaxPromptLen {
			return "", verr(f+".system_prompt", "is longer than %d bytes", MaxPromptLen)
		}
		p, msg := checkTemplate(s.SystemPrompt, resolve)
		if msg != "" {
			return "", verr(f+".system_prompt", "%s", msg)
		}
		return p, nil
	}
	var err error
	switch out.Kind {
	case KindLLM:
		out.Model = model
		if out.SystemPrompt, err = prompt(); err != nil {
			return Step{}, err
		}
	case KindAgent:
		out.Model = model
		if out.SystemPrompt, err = prompt(); err != nil {
			return Step{}, err
		}
		seen := map[string]bool{}
		for j, name := range s.Tools {
			name = strings.TrimSpace(name)
			if _, _, err := tools.SplitName(name); err != nil {
				return Step{}, verr(fmt.Sprintf("%s.tools[%d]", f, j), "%q is not a {plugin}-{tool} name", name)
			}
			if !seen[name] {
				seen[name] = true
				out.Tools = append(out.Tools, name)
			}
		}
		out.MaxCycles = s.MaxCycles
		if out.MaxCycles == 0 {
			out.MaxCycles = DefaultMaxCycles
		}
		if out.MaxCycles < 1 || out.MaxCycles > MaxCycles {
			return Step{}, verr(f+".max_cycles", "must be between 1 and %d", MaxCycles)
		}
	case KindTool:
		out.Tool = strings.TrimSpace(s.Tool)
		if out.Tool == "" {
			return Step{}, verr(f+".tool", "is required")
		}
		if _, _, err := tools.SplitName(out.Tool); err != nil {
			return Step{}, verr(f+".tool", "%q is not a {plugin}-{tool} name", out.Tool)
		}
		if out.Arguments, err = normalizeArguments(f+".arguments", s.Arguments, resolve); err != nil {
			return Step{}, err
		}
	case KindStopChecker:
		ref := strings.TrimSpace(s.StepToCheck)
		if ref == "" {
			return Step{}, verr(f+".step_to_check", "is required")
		}
		id, msg := resolve(ref)
		if msg != "" {
			return Step{}, verr(f+".step_to_check", "%s", msg)
		}
		out.StepToCheck = id
		out.Mode = strings.TrimSpace(s.Mode)
		if out.Mode != StopIfOutputContains && out.Mode != ContinueIfOutputContains {
			return Step{}, verr(f+".mode", "must be %q or %q", StopIfOutputContains, ContinueIfOutputContains)
		}
		for _, v := range s.MatchValues {
			if strings.TrimSpace(v) != "" {
				out.MatchValues = append(out.MatchValues, v)
			}
		}
		if len(out.MatchValues) == 0 {
			return Step{}, verr(f+".match_values", "needs at least one non-empty value")
		}
		if len(out.MatchValues) > maxMatchValues {
			return Step{}, verr(f+".match_values", "has more than %d values", maxMatchValues)
		}
	case "":
		return Step{}, verr(f+".kind", "is required (%s, %s, %s or %s)", KindLLM, KindAgent, KindTool, KindStopChecker)
	default:
		return Step{}, verr(f+".kind", "%q is not a step kind (%s, %s, %s or %s)", out.Kind, KindLLM, KindAgent, KindTool, KindStopChecker)
	}
	return out, nil
}

// normalizeArguments checks that a tool step's arguments are a JSON object
// and that every string in it (at any depth) is a valid template; step
// references by name are rewritten to ids. Absent arguments are {}. The
// original bytes are kept (compacted) unless a reference was rewritten.
func normalizeArguments(f string, raw json.RawMessage, resolve stepResolver) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return json.RawMessage("{}"), nil
	}
	v, err := decodeJSON(raw)
	if err != nil {
		return nil, verr(f, "is not valid JSON: %v", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, verr(f, "must be a JSON object")
	}
	changed := false
	var msg string
	v = mapStrings(v, func(s string) string {
		if msg != "" {
			return s
		}
		out, m := checkTemplate(s, resolve)
		if m != "" {
			msg = m
			return s
		}
		if out != s {
			changed = true
		}
		return out
	})
	if msg != "" {
		return nil, verr(f, "%s", msg)
	}
	if changed {
		b, err := marshalJSON(v)
		if err != nil {
			return nil, verr(f, "%v", err)
		}
		return b, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, verr(f, "is not valid JSON: %v", err)
	}
	return buf.Bytes(), nil
}

// decodeJSON decodes one JSON value keeping numbers exact (json.Number).
func decodeJSON(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("data after the JSON value")
	}
	return v, nil
}

// marshalJSON encodes v compactly without escaping <, > and & (templates are
// full of "<<").
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// mapStrings returns v with every string value (not object keys) replaced by
// f(value), at any depth.
func mapStrings(v any, f func(string) string) any {
	switch t := v.(type) {
	case string:
		return f(t)
	case map[string]any:
		for k, e := range t {
			t[k] = mapStrings(e, f)
		}
		return t
	case []any:
		for i, e := range t {
			t[i] = mapStrings(e, f)
		}
		return t
	}
	return v
}

func normalizeTrigger(t Trigger) (Trigger, error) {
	out := Trigger{Type: strings.TrimSpace(t.Type)}
	switch out.Type {
	case TriggerNewEmail:
		var err error
		if out.FilterRules, err = normalizeRules(t.FilterRules); err != nil {
			return Trigger{}, err
		}
		if len(t.TriggerPrompt) > MaxPromptLen {
			return Trigger{}, verr("trigger.trigger_prompt", "is longer than %d bytes", MaxPromptLen)
		}
		if strings.TrimSpace(t.TriggerPrompt) != "" {
			p, msg := checkTemplate(t.TriggerPrompt, nil)
			if msg != "" {
				return Trigger{}, verr("trigger.trigger_prompt", "%s", msg)
			}
			out.TriggerPrompt = p
		}
		out.TriggerModel = strings.TrimSpace(t.TriggerModel)
		if len(out.TriggerModel) > maxModelLen || strings.ContainsAny(out.TriggerModel, " \t\r\n") {
			return Trigger{}, verr("trigger.trigger_model", "is not a model name")
		}
	case TriggerSchedule:
		out.Cron = strings.Join(strings.Fields(t.Cron), " ")
		if out.Cron == "" {
			return Trigger{}, verr("trigger.cron", "is required for a schedule trigger")
		}
		if _, err := parseCron(out.Cron, time.UTC); err != nil {
			return Trigger{}, verr("trigger.cron", "%v", err)
		}
	case "":
		return Trigger{}, verr("trigger.type", "is required (%s or %s)", TriggerNewEmail, TriggerSchedule)
	default:
		return Trigger{}, verr("trigger.type", "%q is not a trigger type (%s or %s)", out.Type, TriggerNewEmail, TriggerSchedule)
	}
	return out, nil
}

func normalizeRules(r FilterRules) (FilterRules, error) {
	var err error
	out := FilterRules{}
	if out.EmailBlacklist, err = normalizeList("trigger.filter_rules.email_blacklist", r.EmailBlacklist, normEmailRule); err != nil {
		return FilterRules{}, err
	}
	if out.DomainBlacklist, err = normalizeList("trigger.filter_rules.domain_blacklist", r.DomainBlacklist, normDomainRule); err != nil {
		return FilterRules{}, err
	}
	if out.EmailWhitelist, err = normalizeList("trigger.filter_rules.email_whitelist", r.EmailWhitelist, normEmailRule); err != nil {
		return FilterRules{}, err
	}
	if out.DomainWhitelist, err = normalizeList("trigger.filter_rules.domain_whitelist", r.DomainWhitelist, normDomainRule); err != nil {
		return FilterRules{}, err
	}
	return out, nil
}

// normalizeList trims, lower-cases, checks and de-duplicates a rule list,
// dropping blank entries; the result is never nil.
func normalizeList(f string, in []string, norm func(string) (string, bool)) ([]string, error) {
	if len(in) > maxFilterEntries {
		return nil, verr(f, "has more than %d entries", maxFilterEntries)
	}
	out := []string{}
	seen := map[string]bool{}
	for i, v := range in {
		v = strings.ToLower(strings.TrimSpace(v))
		if v == "" {
			continue
		}
		n, ok := norm(v)
		if !ok {
			return nil, verr(fmt.Sprintf("%s[%d]", f, i), "%q is not valid here", in[i])
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// normEmailRule accepts a@b (loosely: one '@', both sides non-empty, no
// spaces or angle brackets).
func normEmailRule(v string) (string, bool) {
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || at == len(v)-1 || strings.ContainsAny(v, " \t<>,;") || strings.Count(v, "@") != 1 {
		return "", false
	}
	return v, true
}

// normDomainRule accepts example.com (a leading "@" is dropped).
func normDomainRule(v string) (string, bool) {
	v = strings.TrimPrefix(v, "@")
	if v == "" || strings.ContainsAny(v, " \t<>,;@/") || strings.HasPrefix(v, ".") || strings.HasSuffix(v, ".") {
		return "", false
	}
	return v, true
}

// cronParser accepts 5 fields, or 6 with seconds first, and descriptors
// (@daily, @every 1h ...).
func cronParser() cron.Parser {
	return cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
}

// parseCron parses a schedule trigger's spec in loc (the user's timezone).
// A TZ= prefix is refused (the user's timezone setting applies), and so is a
// spec that never fires. "@every D" schedules are aligned to multiples of D
// since the zero time, so that every replica computes the same fire times.
func parseCron(spec string, loc *time.Location) (s cron.Schedule, err error) {
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		return nil, fmt.Errorf("a time zone prefix is not allowed: schedules run in the user's timezone setting")
	}
	defer func() {
		if r := recover(); r != nil { // robfig/cron panics on some malformed specs
			s, err = nil, fmt.Errorf("invalid cron spec %q", spec)
		}
	}()
	sched, err := cronParser().Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("invalid cron spec: %v", err)
	}
	switch t := sched.(type) {
	case *cron.SpecSchedule:
		t.Location = loc
	case cron.ConstantDelaySchedule:
		sched = alignedEvery{d: t.Delay}
	}
	if sched.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("cron spec %q never fires", spec)
	}
	return sched, nil
}

// alignedEvery fires at every multiple of d (counted from the zero time),
// the same instants on every replica.
type alignedEvery struct{ d time.Duration }

func (a alignedEvery) Next(t time.Time) time.Time { return t.Truncate(a.d).Add(a.d) }
