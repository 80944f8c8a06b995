package tone

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

var user = sdk.User{UserID: "12345678-1234-5678-9012-123456789012", WorkflowID: "w", InstanceID: "i", StepID: "s"}

func call(t *testing.T, h *sdktest.Harness, args any) (string, bool) {
	t.Helper()
	res, err := h.Call(context.Background(), "get_tone_of_voice_profile", args)
	if err != nil {
		t.Fatalf("call(%v): %v", args, err)
	}
	var s string
	if err := json.Unmarshal(res.Content, &s); err != nil {
		t.Fatalf("content %s is not a string: %v", res.Content, err)
	}
	return s, res.IsError
}

func TestGetToneOfVoiceProfile(t *testing.T) {
	h := sdktest.New(Plugin(), user, &sdktest.FakeHost{Tone: map[string]string{
		"en": "Short, friendly, signs with 'Cheers'.",
		"de": "Förmlich, Sie-Form.",
		"fr": "  ", // an empty profile is no profile
	}})
	tests := []struct {
		lang    string
		want    string
		isError bool
	}{
		{"en", "Short, friendly, signs with 'Cheers'.", false},
		{" EN ", "Short, friendly, signs with 'Cheers'.", false},
		{"en-US", "Short, friendly, signs with 'Cheers'.", false},
		{"de_AT", "Förmlich, Sie-Form.", false},
		{"German", "Förmlich, Sie-Form.", false},
		{"english", "Short, friendly, signs with 'Cheers'.", false},
		{"fr", `no tone of voice profile for language "fr"; profiles exist for: de, en`, true},
		{"nl", `no tone of voice profile for language "nl"; profiles exist for: de, en`, true},
		{"", "language is required; profiles exist for: de, en", true},
	}
	for _, tt := range tests {
		got, isErr := call(t, h, map[string]any{"language": tt.lang})
		if got != tt.want || isErr != tt.isError {
			t.Errorf("language %q = %q (is_error %v), want %q (is_error %v)", tt.lang, got, isErr, tt.want, tt.isError)
		}
	}
	if got, isErr := call(t, h, map[string]any{"lang": "en"}); !isErr || !strings.Contains(got, "unknown field") {
		t.Errorf("bad arguments = %q (is_error %v)", got, isErr)
	}
}

func TestProfilesKeyedByName(t *testing.T) {
	h := sdktest.New(Plugin(), user, &sdktest.FakeHost{Tone: map[string]string{"English": "casual"}})
	if got, isErr := call(t, h, map[string]any{"language": "en"}); isErr || got != "casual" {
		t.Errorf("en against an English profile = %q (is_error %v)", got, isErr)
	}
}

func TestNoProfile(t *testing.T) {
	for _, tone := range []map[string]string{nil, {}, {"en": ""}} {
		h := sdktest.New(Plugin(), user, &sdktest.FakeHost{Tone: tone})
		got, isErr := call(t, h, map[string]any{"language": "en"})
		if !isErr || got != "no tone of voice profile yet: run POST /api/v1/inbox/tone-of-voice" {
			t.Errorf("tone %v: %q (is_error %v)", tone, got, isErr)
		}
	}
}

func TestNeedsToneProfile(t *testing.T) {
	p := Plugin()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Name != "tone" || p.Version != "1.0.0" || len(p.Needs) != 1 || p.Needs[0] != sdk.NeedToneProfile {
		t.Fatalf("plugin %s %s needs %v", p.Name, p.Version, p.Needs)
	}
	// Without the declared need the host refuses, and the call fails.
	p.Needs = nil
	h := sdktest.New(p, user, &sdktest.FakeHost{Tone: map[string]string{"en": "x"}})
	_, err := h.Call(context.Background(), "get_tone_of_voice_profile", map[string]any{"language": "en"})
	if !errors.Is(err, sdk.ErrDenied) {
		t.Fatalf("call without the need: %v, want sdk.ErrDenied", err)
	}
}

func TestNoUser(t *testing.T) {
	_, err := Plugin().Tools[0].Handler(context.Background(), sdk.Call{Arguments: []byte(`{"language":"en"}`)})
	if err == nil || !strings.Contains(err.Error(), "no user") {
		t.Fatalf("call without a user: %v", err)
	}
}
