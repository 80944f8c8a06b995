package workflow

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// baseWorkflow is valid: classify -> check -> reply -> label.
func baseWorkflow() Workflow {
	return Workflow{
		Name: "Quote requests",
		Trigger: &Trigger{Type: TriggerNewEmail, FilterRules: FilterRules{
			EmailBlacklist: []string{" Spam@Example.com "}, DomainWhitelist: []string{"@Customer.COM", "customer.com", ""},
		}},
		Steps: []Step{
			{ID: "s1", Name: "classify", Kind: KindLLM, SystemPrompt: "Is this a quote request? <<trigger_output>>"},
			{Name: "check", Kind: KindStopChecker, StepToCheck: "classify", Mode: StopIfOutputContains, MatchValues: []string{"no", ""}},
			{Name: "reply", Kind: KindAgent, SystemPrompt: "Reply to <<trigger.from>> about <<step_output.classify>> on <<CURRENT_DATE.Europe/Amsterdam>>",
				Tools: []string{"imap-draft_reply", "imap-draft_reply"}},
			{Name: "label", Kind: KindTool, Tool: "imap-set_label",
				Arguments: json.RawMessage(`{"messageId": "<<trigger.message_id>>", "label": "Quotes", "nested": [{"x": "<<step_output.reply>>"}], "n": 12345678901234567890}`)},
		},
	}
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		name      string
		mod       func(w *Workflow)
		wantField string // "" = valid
		wantMsg   string // substring of the message
	}{
		{"valid", func(w *Workflow) {}, "", ""},
		{"no name", func(w *Workflow) { w.Name = "  " }, "name", "required"},
		{"long name", func(w *Workflow) { w.Name = strings.Repeat("é", 201) }, "name", "200"},
		{"no trigger is fine", func(w *Workflow) { w.Trigger = nil }, "", ""},
		{"no steps is fine", func(w *Workflow) { w.Steps = nil }, "", ""},
		{"unknown kind", func(w *Workflow) { w.Steps[0].Kind = "custom_llm" }, "steps[0].kind", "not a step kind"},
		{"missing kind", func(w *Workflow) { w.Steps[0].Kind = "" }, "steps[0].kind", "required"},
		{"llm without prompt", func(w *Workflow) { w.Steps[0].SystemPrompt = " " }, "steps[0].system_prompt", "required"},
		{"agent without prompt", func(w *Workflow) { w.Steps[2].SystemPrompt = "" }, "steps[2].system_prompt", "required"},
		{"agent tool name", func(w *Workflow) { w.Steps[2].Tools = []string{"draft_reply"} }, "steps[2].tools[0]", "{plugin}-{tool}"},
		{"agent max_cycles too high", func(w *Workflow) { w.Steps[2].MaxCycles = 51 }, "steps[2].max_cycles", "between 1 and 50"},
		{"agent max_cycles negative", func(w *Workflow) { w.Steps[2].MaxCycles = -1 }, "steps[2].max_cycles", "between 1 and 50"},
		{"tool without tool", func(w *Workflow) { w.Steps[3].Tool = "" }, "steps[3].tool", "required"},
		{"tool bad name", func(w *Workflow) { w.Steps[3].Tool = "imap" }, "steps[3].tool", "{plugin}-{tool}"},
		{"tool arguments not an object", func(w *Workflow) { w.Steps[3].Arguments = json.RawMessage(`["a"]`) }, "steps[3].arguments", "JSON object"},
		{"tool arguments not JSON", func(w *Workflow) { w.Steps[3].Arguments = json.RawMessage(`{"a":`) }, "steps[3].arguments", "not valid JSON"},
		{"tool arguments unknown placeholder", func(w *Workflow) {
			w.Steps[3].Arguments = json.RawMessage(`{"a": {"b": ["<<trigger.cc>>"]}}`)
		}, "steps[3].arguments", "<<trigger.cc>>"},
		{"stop checker later step", func(w *Workflow) { w.Steps[1].StepToCheck = "reply" }, "steps[1].step_to_check", "later step"},
		{"stop checker itself", func(w *Workflow) { w.Steps[1].StepToCheck = "check" }, "steps[1].step_to_check", "itself"},
		{"stop checker unknown step", func(w *Workflow) { w.Steps[1].StepToCheck = "nope" }, "steps[1].step_to_check", `unknown step "nope"`},
		{"stop checker missing step", func(w *Workflow) { w.Steps[1].StepToCheck = "" }, "steps[1].step_to_check", "required"},
		{"stop checker mode", func(w *Workflow) { w.Steps[1].Mode = "stop_if" }, "steps[1].mode", StopIfOutputContains},
		{"stop checker no values", func(w *Workflow) { w.Steps[1].MatchValues = []string{" ", ""} }, "steps[1].match_values", "at least one"},
		{"unknown placeholder", func(w *Workflow) { w.Steps[0].SystemPrompt = "hi <<trigger_input>>" }, "steps[0].system_prompt", "unknown placeholder <<trigger_input>>"},
		{"placeholder case matters", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<current_date>>" }, "steps[0].system_prompt", "<<current_date>>"},
		{"later step placeholder", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<step_output.reply>>" }, "steps[0].system_prompt", `<<step_output.reply>>: step "reply" is a later step`},
		{"unknown step placeholder", func(w *Workflow) { w.Steps[2].SystemPrompt = "<<step_output.ghost>>" }, "steps[2].system_prompt", `<<step_output.ghost>>: unknown step "ghost"`},
		{"step_output without step", func(w *Workflow) { w.Steps[2].SystemPrompt = "<<step_output>>" }, "steps[2].system_prompt", "name a step"},
		{"trigger_output with argument", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<trigger_output.x>>" }, "steps[0].system_prompt", "no argument"},
		{"unknown trigger field", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<trigger.cc>>" }, "steps[0].system_prompt", "<<trigger.cc>>"},
		{"unknown zone", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<CURRENT_DATE.Mars/Olympus>>" }, "steps[0].system_prompt", "unknown time zone"},
		{"Local zone refused", func(w *Workflow) { w.Steps[0].SystemPrompt = "<<CURRENT_DATE.Local>>" }, "steps[0].system_prompt", "unknown time zone"},
		{"zone ok", func(w *Workflow) {
			w.Steps[0].SystemPrompt = "<<CURRENT_DATE.America/Argentina/Buenos_Aires>> <<CURRENT_DATE>>"
		}, "", ""},
		{"literal angle brackets", func(w *Workflow) { w.Steps[0].SystemPrompt = "x << y >> z, cat <<EOF, <<>>, << trigger_output >>" }, "", ""},
		{"duplicate step id", func(w *Workflow) { w.Steps[1].ID = "s1" }, "steps[1].id", "also the id"},
		{"bad step id", func(w *Workflow) { w.Steps[1].ID = "a b" }, "steps[1].id", "letters"},
		{"duplicate step name", func(w *Workflow) { w.Steps[2].Name = "classify" }, "steps[2].name", "also the name"},
		{"name equals another id", func(w *Workflow) { w.Steps[2].Name = "s1" }, "steps[2].name", "is the id of steps[0]"},
		{"name with angle bracket", func(w *Workflow) { w.Steps[2].Name = "a>b" }, "steps[2].name", "must not contain"},
		{"trigger type", func(w *Workflow) { w.Trigger.Type = "cron" }, "trigger.type", "not a trigger type"},
		{"trigger type missing", func(w *Workflow) { w.Trigger.Type = "" }, "trigger.type", "required"},
		{"bad email rule", func(w *Workflow) { w.Trigger.FilterRules.EmailWhitelist = []string{"not an address"} }, "trigger.filter_rules.email_whitelist[0]", "not valid"},
		{"bad domain rule", func(w *Workflow) { w.Trigger.FilterRules.DomainBlacklist = []string{"a@b.com"} }, "trigger.filter_rules.domain_blacklist[0]", "not valid"},
		{"trigger prompt may not use steps", func(w *Workflow) { w.Trigger.TriggerPrompt = "<<step_output.s1>>" }, "trigger.trigger_prompt", "no step output"},
		{"trigger prompt unknown placeholder", func(w *Workflow) { w.Trigger.TriggerPrompt = "<<nope>>" }, "trigger.trigger_prompt", "<<nope>>"},
		{"cron 5 fields", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "0 8 * * 1-5"} }, "", ""},
		{"cron 6 fields", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "30 0 8 * * *"} }, "", ""},
		{"cron descriptor", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "@daily"} }, "", ""},
		{"cron every", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "@every 1h"} }, "", ""},
		{"cron missing", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule} }, "trigger.cron", "required"},
		{"cron bad", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "61 * * * *"} }, "trigger.cron", "invalid"},
		{"cron too many fields", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "* * * * * * *"} }, "trigger.cron", "invalid"},
		{"cron never fires", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "0 0 30 2 *"} }, "trigger.cron", "never fires"},
		{"cron TZ prefix", func(w *Workflow) { w.Trigger = &Trigger{Type: TriggerSchedule, Cron: "TZ=UTC"} }, "trigger.cron", "time zone prefix"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := baseWorkflow()
			c.mod(&w)
			_, err := Normalize(w)
			if c.wantField == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v, want a *ValidationError", err)
			}
			if ve.Field != c.wantField || !strings.Contains(ve.Message, c.wantMsg) {
				t.Fatalf("got %s: %s; want %s: ...%s...", ve.Field, ve.Message, c.wantField, c.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), "workflow: "+c.wantField+": ") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestNormalizeResult(t *testing.T) {
	in := baseWorkflow()
	orig := baseWorkflow()
	w, err := Normalize(in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, orig) {
		t.Errorf("Normalize modified its argument")
	}
	ids := map[string]bool{}
	for i, s := range w.Steps {
		if s.ID == "" || ids[s.ID] {
			t.Errorf("steps[%d] id %q", i, s.ID)
		}
		ids[s.ID] = true
	}
	if w.Steps[0].ID != "s1" {
		t.Errorf("given id not kept: %q", w.Steps[0].ID)
	}
	if len(w.Steps[1].ID) != 36 {
		t.Errorf("assigned id %q is not a UUID", w.Steps[1].ID)
	}
	if got := w.Steps[1].StepToCheck; got != "s1" {
		t.Errorf("step_to_check by name resolved to %q, want s1", got)
	}
	if got, want := w.Steps[1].MatchValues, []string{"no"}; !reflect.DeepEqual(got, want) {
		t.Errorf("match values %q, want %q", got, want)
	}
	if want := "Reply to <<trigger.from>> about <<step_output.s1>> on <<CURRENT_DATE.Europe/Amsterdam>>"; w.Steps[2].SystemPrompt != want {
		t.Errorf("prompt %q, want %q", w.Steps[2].SystemPrompt, want)
	}
	if w.Steps[2].MaxCycles != DefaultMaxCycles {
		t.Errorf("max_cycles %d", w.Steps[2].MaxCycles)
	}
	if got := w.Steps[2].Tools; !reflect.DeepEqual(got, []string{"imap-draft_reply"}) {
		t.Errorf("tools %q", got)
	}
	var args map[string]any
	dec := json.NewDecoder(strings.NewReader(string(w.Steps[3].Arguments)))
	dec.UseNumber()
	if err := dec.Decode(&args); err != nil {
		t.Fatal(err)
	}
	if got := args["nested"].([]any)[0].(map[string]any)["x"]; got != "<<step_output."+w.Steps[2].ID+">>" {
		t.Errorf("nested argument reference %q not resolved to the id", got)
	}
	if got := args["n"].(json.Number).String(); got != "12345678901234567890" {
		t.Errorf("big number changed to %s", got)
	}
	if strings.Contains(string(w.Steps[3].Arguments), `\u003c`) {
		t.Errorf("arguments HTML-escaped: %s", w.Steps[3].Arguments)
	}
	fr := w.Trigger.FilterRules
	if !reflect.DeepEqual(fr.EmailBlacklist, []string{"spam@example.com"}) || !reflect.DeepEqual(fr.DomainWhitelist, []string{"customer.com"}) ||
		fr.EmailWhitelist == nil || fr.DomainBlacklist == nil {
		t.Errorf("filter rules %+v", fr)
	}
	// Fields of other kinds are dropped.
	x := baseWorkflow()
	x.Steps[0].Tools, x.Steps[0].Tool, x.Steps[0].MatchValues = []string{"a-b"}, "a-b", []string{"x"}
	xn, err := Normalize(x)
	if err != nil {
		t.Fatal(err)
	}
	if s := xn.Steps[0]; s.Tools != nil || s.Tool != "" || s.MatchValues != nil {
		t.Errorf("foreign fields kept: %+v", s)
	}
	// Normalising again changes nothing.
	again, err := Normalize(w)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, w) {
		t.Errorf("Normalize is not idempotent:\n%+v\n%+v", again, w)
	}
	// Unnamed steps get names.
	u := Workflow{Name: "n", Steps: []Step{{Kind: KindLLM, SystemPrompt: "p"}, {Kind: KindLLM, SystemPrompt: "<<step_output.step 1>>"}}}
	un, err := Normalize(u)
	if err != nil {
		t.Fatal(err)
	}
	if un.Steps[0].Name != "step 1" || un.Steps[1].SystemPrompt != "<<step_output."+un.Steps[0].ID+">>" {
		t.Errorf("unnamed steps: %+v", un.Steps)
	}
	if err := Validate(baseWorkflow()); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestRemapStepIDs(t *testing.T) {
	w, err := Normalize(baseWorkflow())
	if err != nil {
		t.Fatal(err)
	}
	r, err := RemapStepIDs(w)
	if err != nil {
		t.Fatal(err)
	}
	for i := range w.Steps {
		if r.Steps[i].ID == w.Steps[i].ID || len(r.Steps[i].ID) != 36 || r.Steps[i].Name != w.Steps[i].Name {
			t.Errorf("steps[%d]: %q -> %q", i, w.Steps[i].ID, r.Steps[i].ID)
		}
	}
	if r.Steps[1].StepToCheck != r.Steps[0].ID {
		t.Errorf("step_to_check %q, want %q", r.Steps[1].StepToCheck, r.Steps[0].ID)
	}
	if want := "<<step_output." + r.Steps[0].ID + ">>"; !strings.Contains(r.Steps[2].SystemPrompt, want) {
		t.Errorf("prompt %q lacks %s", r.Steps[2].SystemPrompt, want)
	}
	if want := "<<step_output." + r.Steps[2].ID + ">>"; !strings.Contains(string(r.Steps[3].Arguments), want) {
		t.Errorf("arguments %s lack %s", r.Steps[3].Arguments, want)
	}
	for _, s := range w.Steps {
		for _, rs := range r.Steps {
			if strings.Contains(rs.SystemPrompt+string(rs.Arguments)+rs.StepToCheck, s.ID) {
				t.Errorf("old id %s left in %+v", s.ID, rs)
			}
		}
	}
}
