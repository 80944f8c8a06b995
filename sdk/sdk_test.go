package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

func TestBind(t *testing.T) {
	type args struct {
		Text  string `json:"text"`
		Count int    `json:"count"`
	}
	cases := []struct {
		name, in string
		want     args
		err      string
	}{
		{"ok", `{"text":"hi","count":2}`, args{"hi", 2}, ""},
		{"empty is {}", ``, args{}, ""},
		{"null is {}", `null`, args{}, ""},
		{"unknown field", `{"text":"hi","colour":"red"}`, args{}, `unknown field "colour"`},
		{"wrong type", `{"count":"two"}`, args{}, `field "count" must be int, got string`},
		{"trailing data", `{"text":"a"} {"text":"b"}`, args{}, "trailing data"},
		{"not an object", `[1]`, args{}, "bad arguments"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got args
			err := sdk.Call{Arguments: json.RawMessage(tc.in)}.Bind(&got)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Errorf("got %+v, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "sdk: ") {
				t.Errorf("error %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}

func TestResults(t *testing.T) {
	if r := sdk.Text(`say "hi"`); string(r.Content) != `"say \"hi\""` || r.IsError {
		t.Errorf("Text: %+v", r)
	}
	if r := sdk.Errorf("no message %d", 7); string(r.Content) != `"no message 7"` || !r.IsError {
		t.Errorf("Errorf: %+v", r)
	}
	if r, err := sdk.JSON(map[string]int{"n": 1}); err != nil || string(r.Content) != `{"n":1}` {
		t.Errorf("JSON: %+v %v", r, err)
	}
	if _, err := sdk.JSON(func() {}); err == nil {
		t.Error("JSON of a func")
	}
}

func TestValidate(t *testing.T) {
	h := func(context.Context, sdk.Call) (sdk.Result, error) { return sdk.Text(""), nil }
	cases := []struct {
		name string
		p    sdk.Plugin
		err  string
	}{
		{"ok", sdk.Plugin{Name: "mail_tools", Tools: []sdk.Tool{{Name: "list", Handler: h}}, Needs: []sdk.Need{sdk.NeedIMAPCredentials}}, ""},
		{"hyphen in name", sdk.Plugin{Name: "mail-tools"}, "plugin name"},
		{"upper case name", sdk.Plugin{Name: "Mail"}, "plugin name"},
		{"empty name", sdk.Plugin{}, "plugin name"},
		{"bad tool name", sdk.Plugin{Name: "p", Tools: []sdk.Tool{{Name: "a b", Handler: h}}}, "tool 0"},
		{"duplicate tool", sdk.Plugin{Name: "p", Tools: []sdk.Tool{{Name: "a", Handler: h}, {Name: "a", Handler: h}}}, "defined twice"},
		{"no handler", sdk.Plugin{Name: "p", Tools: []sdk.Tool{{Name: "a"}}}, "no handler"},
		{"schema not an object", sdk.Plugin{Name: "p", Tools: []sdk.Tool{{Name: "a", Handler: h, InputSchema: json.RawMessage(`[]`)}}}, "not a JSON object"},
		{"unknown need", sdk.Plugin{Name: "p", Needs: []sdk.Need{"root"}}, "unknown need"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("Validate: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestNoHostOutsideACall(t *testing.T) {
	ctx := context.Background()
	if _, ok := sdk.UserFrom(ctx); ok {
		t.Error("a user outside a call")
	}
	h := sdk.HostFrom(ctx)
	if h == nil {
		t.Fatal("nil host")
	}
	if _, _, err := h.KVGet(ctx, "k"); !errors.Is(err, sdk.ErrNoHost) {
		t.Errorf("KVGet: %v", err)
	}
	if err := h.VectorUpsert(ctx, []sdk.VectorDoc{{ThreadID: "t", Text: "x"}}); !errors.Is(err, sdk.ErrNoHost) {
		t.Errorf("VectorUpsert: %v", err)
	}
}

// TestFakeHostVectorUpsert: the fake stores what VectorUpsert accepts where
// VectorSearch and VectorCount see it, as the plugin would read it back,
// and refuses what inboxd refuses without storing any of the batch.
func TestFakeHostVectorUpsert(t *testing.T) {
	fake := &sdktest.FakeHost{Hits: []sdk.VectorHit{{ThreadID: "old", Score: 0.9}}}
	host := fake.Host()
	ctx := context.Background()
	doc := func(id, text string, payload map[string]any) sdk.VectorDoc {
		return sdk.VectorDoc{ThreadID: id, Text: text, Payload: payload}
	}
	many := func(n, textBytes int) []sdk.VectorDoc {
		docs := make([]sdk.VectorDoc, n)
		for i := range docs {
			docs[i] = doc(fmt.Sprint("many-", i), strings.Repeat("x", textBytes), nil)
		}
		return docs
	}
	// One script: each step sees what the steps before it stored.
	steps := []struct {
		name     string
		docs     []sdk.VectorDoc
		err      string
		wantHits string // the hits of a search, best first, as JSON
	}{
		{"stored and found", []sdk.VectorDoc{doc("a", "first text", map[string]any{"n": 1})}, "",
			`[{"ThreadID":"old","Score":0.9,"Payload":null},{"ThreadID":"a","Score":0,"Payload":{"n":1,"thread_id":"a"}}]`},
		{"replaced by thread id", []sdk.VectorDoc{doc("a", "second text", map[string]any{"n": 2.5, "thread_id": "a"})}, "",
			`[{"ThreadID":"old","Score":0.9,"Payload":null},{"ThreadID":"a","Score":0,"Payload":{"n":2.5,"thread_id":"a"}}]`},
		{"too many documents", many(sdk.MaxVectorUpsertDocs+1, 1), "101 documents in one call, at most 100", ""},
		{"too many bytes", many(3, 1<<20), "bytes of thread ids, texts and payloads in one call, at most 2097152", ""},
		{"blank text", []sdk.VectorDoc{doc("b", "fine", nil), doc("c", "  ", nil)}, `document 2 (thread "c")`, ""},
		{"no thread id", []sdk.VectorDoc{doc("", "text", nil)}, "a thread id and a text are required", ""},
		{"reserved payload field", []sdk.VectorDoc{doc("b", "text", map[string]any{"tenant_id": "someone"})}, `"tenant_id" is reserved`, ""},
		{"another thread's id", []sdk.VectorDoc{doc("b", "text", map[string]any{"thread_id": "z"})}, "differs from the thread id", ""},
		{"payload not JSON", []sdk.VectorDoc{doc("b", "text", map[string]any{"f": func() {}})}, "payload", ""},
	}
	for _, st := range steps {
		err := host.VectorUpsert(ctx, st.docs)
		if st.err != "" {
			if err == nil || !strings.Contains(err.Error(), st.err) {
				t.Errorf("%s: %v, want an error containing %q", st.name, err, st.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		hits, err := host.VectorSearch(ctx, "anything", 10, nil)
		if b, _ := json.Marshal(hits); err != nil || string(b) != st.wantHits {
			t.Errorf("%s: hits %s %v, want %s", st.name, b, err, st.wantHits)
		}
	}
	if n, err := host.VectorCount(ctx); n != 2 || err != nil {
		t.Errorf("count %d %v: a refused batch stored something", n, err)
	}
	if len(fake.Upserted) != 2 || fake.Upserted[1].Text != "second text" {
		t.Errorf("Upserted %+v", fake.Upserted)
	}
}

func TestHarnessEnforcesNeeds(t *testing.T) {
	tool := func(name string, f func(ctx context.Context) (any, error)) sdk.Tool {
		return sdk.Tool{Name: name, Handler: func(ctx context.Context, _ sdk.Call) (sdk.Result, error) {
			v, err := f(ctx)
			if err != nil {
				return sdk.Result{}, err
			}
			return sdk.JSON(v)
		}}
	}
	p := sdk.Plugin{Name: "p", Tools: []sdk.Tool{
		tool("settings", func(ctx context.Context) (any, error) { return sdk.HostFrom(ctx).Settings(ctx) }),
		tool("tone", func(ctx context.Context) (any, error) { return sdk.HostFrom(ctx).ToneProfile(ctx) }),
		tool("user", func(ctx context.Context) (any, error) { u, _ := sdk.UserFrom(ctx); return u, nil }),
		{Name: "bad_content", Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
			return sdk.Result{Content: json.RawMessage("not json")}, nil
		}},
		{Name: "panics", Handler: func(context.Context, sdk.Call) (sdk.Result, error) { panic("boom") }},
	}}
	host := &sdktest.FakeHost{Settings: sdk.Settings{IMAPUsername: "u", IMAPPassword: "pw"}, Tone: map[string]string{"en": "terse"}}
	user := sdk.User{UserID: "aaaaaaaa-0000-4000-8000-000000000001", StepID: "s1"}
	ctx := context.Background()

	h := sdktest.New(p, user, host)
	if r, err := h.Call(ctx, "settings", nil); err != nil || !strings.Contains(string(r.Content), `"IMAPPassword":""`) {
		t.Errorf("settings without the need: %s %v", r.Content, err)
	}
	if _, err := h.Call(ctx, "tone", nil); !errors.Is(err, sdk.ErrDenied) {
		t.Errorf("tone without the need: %v", err)
	}
	if r, err := h.Call(ctx, "user", nil); err != nil || !strings.Contains(string(r.Content), `"StepID":"s1"`) {
		t.Errorf("user: %s %v", r.Content, err)
	}
	if _, err := h.Call(ctx, "bad_content", nil); err == nil {
		t.Error("non-JSON content accepted")
	}
	if _, err := h.Call(ctx, "panics", nil); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Errorf("panic: %v", err)
	}
	if _, err := h.Call(ctx, "settings", []int{1}); err == nil {
		t.Error("array arguments accepted")
	}
	if _, err := h.Call(ctx, "missing", nil); err == nil {
		t.Error("missing tool called")
	}

	p.Needs = []sdk.Need{sdk.NeedIMAPCredentials, sdk.NeedToneProfile}
	h = sdktest.New(p, user, host)
	if r, err := h.Call(ctx, "settings", nil); err != nil || !strings.Contains(string(r.Content), `"IMAPPassword":"pw"`) {
		t.Errorf("settings with the need: %s %v", r.Content, err)
	}
	if r, err := h.Call(ctx, "tone", nil); err != nil || string(r.Content) != `{"en":"terse"}` {
		t.Errorf("tone with the need: %s %v", r.Content, err)
	}
}
