package workflow

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzNormalizeWorkflow decodes any JSON as a workflow and checks
// Normalize: a refusal is a *ValidationError naming a field; an accepted
// workflow is a fixed point (normalising it again changes nothing, also
// after a JSON round trip), every step reference points to an earlier
// step's id, and RemapStepIDs gives steps fresh ids without changing what
// any step renders to.
//
// Seed corpus: testdata/fuzz/FuzzNormalizeWorkflow, and baseWorkflow.
func FuzzNormalizeWorkflow(f *testing.F) {
	b, _ := json.Marshal(baseWorkflow())
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var w Workflow
		if json.Unmarshal(data, &w) != nil {
			return
		}
		n, err := Normalize(w)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field == "" || ve.Message == "" {
				t.Fatalf("error %T %q is not a ValidationError naming a field", err, err)
			}
			return
		}
		again, err := Normalize(n)
		if err != nil {
			t.Fatalf("normalised workflow refused: %v", err)
		}
		if !reflect.DeepEqual(again, n) {
			t.Fatalf("Normalize is not idempotent:\n%+v\n%+v", n, again)
		}
		b, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		var decoded Workflow
		if err := json.Unmarshal(b, &decoded); err != nil {
			t.Fatalf("normalised workflow does not decode: %v\n%s", err, b)
		}
		if rt, err := Normalize(decoded); err != nil || !reflect.DeepEqual(canonical(t, rt), canonical(t, n)) {
			t.Fatalf("JSON round trip changes the workflow (%v):\n%+v\n%+v", err, n, rt)
		}
		checkStepRefs(t, n)

		re, err := RemapStepIDs(n)
		if err != nil {
			t.Fatalf("RemapStepIDs: %v", err)
		}
		if len(re.Steps) != len(n.Steps) {
			t.Fatalf("RemapStepIDs: %d steps, want %d", len(re.Steps), len(n.Steps))
		}
		checkStepRefs(t, re)
		oldEnv, newEnv := stepEnv(n), stepEnv(re)
		for i, s := range n.Steps {
			r := re.Steps[i]
			if r.ID == s.ID || r.Name != s.Name || r.Kind != s.Kind {
				t.Fatalf("step %d: %+v remapped to %+v", i, s, r)
			}
			if render(s.SystemPrompt, oldEnv) != render(r.SystemPrompt, newEnv) {
				t.Fatalf("step %d renders differently after RemapStepIDs: %q, %q", i, s.SystemPrompt, r.SystemPrompt)
			}
			if s.Kind == KindTool {
				a, err1 := renderArguments(s.Arguments, oldEnv)
				b, err2 := renderArguments(r.Arguments, newEnv)
				if err1 != nil || err2 != nil || a != b {
					t.Fatalf("step %d arguments render differently after RemapStepIDs: %s (%v), %s (%v)", i, a, err1, b, err2)
				}
			}
			if s.StepToCheck != "" && oldEnv.outputs[s.StepToCheck] != newEnv.outputs[r.StepToCheck] {
				t.Fatalf("step %d checks another step after RemapStepIDs", i)
			}
		}
	})
}

// canonical is w with tool arguments in one spelling: JSON encoding may
// escape "<" as \u003c, and Normalize keeps the arguments' bytes.
func canonical(t *testing.T, w Workflow) Workflow {
	t.Helper()
	w.Steps = append([]Step(nil), w.Steps...)
	for i, s := range w.Steps {
		if len(s.Arguments) == 0 {
			continue
		}
		v, err := decodeJSON(s.Arguments)
		if err != nil {
			t.Fatalf("step %d: arguments %s: %v", i, s.Arguments, err)
		}
		if w.Steps[i].Arguments, err = marshalJSON(v); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// stepEnv renders <<step_output.ID>> as the step's name.
func stepEnv(w Workflow) *renderEnv {
	env := &renderEnv{outputs: map[string]string{}, now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	for _, s := range w.Steps {
		env.outputs[s.ID] = "output of " + s.Name
	}
	return env
}

// checkStepRefs: ids and names are unique, and every reference (in
// step_to_check, prompts and tool arguments) is the id of an earlier step.
func checkStepRefs(t *testing.T, w Workflow) {
	t.Helper()
	earlier := map[string]bool{}
	names := map[string]bool{}
	for i, s := range w.Steps {
		if s.ID == "" || earlier[s.ID] || names[s.Name] {
			t.Fatalf("step %d: id %q or name %q empty or not unique", i, s.ID, s.Name)
		}
		refs := stepRefs(s.SystemPrompt)
		if s.StepToCheck != "" {
			refs = append(refs, s.StepToCheck)
		}
		if len(s.Arguments) > 0 {
			v, err := decodeJSON(s.Arguments)
			if err != nil {
				t.Fatalf("step %d: arguments %s: %v", i, s.Arguments, err)
			}
			mapStrings(v, func(x string) string { refs = append(refs, stepRefs(x)...); return x })
		}
		for _, ref := range refs {
			if !earlier[ref] {
				t.Fatalf("step %d refers to %q, not the id of an earlier step", i, ref)
			}
		}
		earlier[s.ID], names[s.Name] = true, true
	}
	if w.Trigger != nil && len(stepRefs(w.Trigger.TriggerPrompt)) > 0 {
		t.Fatalf("trigger prompt %q refers to a step", w.Trigger.TriggerPrompt)
	}
}

func stepRefs(tmpl string) []string {
	var out []string
	for _, p := range scanPlaceholders(tmpl) {
		if p.name == phStepOutput {
			out = append(out, p.arg)
		}
	}
	return out
}

// TestNormalizeFuzzSeeds keeps the hostile seeds of FuzzNormalizeWorkflow
// readable: each is refused with a ValidationError naming the field.
func TestNormalizeFuzzSeeds(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 5000) + `"x"` + strings.Repeat(`}`, 5000)
	cases := []struct {
		name, json, field string
	}{
		{"too many steps", `{"name":"x","steps":[` + strings.Repeat(`{"kind":"llm","system_prompt":"p"},`, MaxSteps) + `{"kind":"llm","system_prompt":"p"}]}`, "steps"},
		{"deep arguments", `{"name":"x","steps":[{"kind":"tool","tool":"a-b","arguments":` + deep + `}]}`, ""},
		{"huge filter list", `{"name":"x","trigger":{"type":"new_email","filter_rules":{"email_whitelist":[` + strings.Repeat(`"a@b",`, maxFilterEntries) + `"a@b"]}}}`, "trigger.filter_rules.email_whitelist"},
		{"invalid UTF-8 name", "{\"name\":\"\xff\xfe\",\"steps\":[{\"kind\":\"llm\",\"system_prompt\":\"<<trigger.\xff>>\"}]}", "steps[0].system_prompt"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var w Workflow
			if err := json.Unmarshal([]byte(c.json), &w); err != nil {
				t.Fatal(err)
			}
			_, err := Normalize(w)
			var ve *ValidationError
			switch {
			case c.field == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.field != "" && (!errors.As(err, &ve) || ve.Field != c.field):
				t.Fatalf("error %v, want one naming %s", err, c.field)
			}
		})
	}
}
