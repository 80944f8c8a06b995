package settings

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
)

// fullSettings has every field set to a valid value.
func fullSettings() Settings {
	return Settings{
		IMAPServer: "imap.example.com", IMAPPort: 993, IMAPSecurity: "tls", IMAPUsername: "ann", IMAPPassword: "imap-secret",
		EmbeddingModel: "emb", LLMBaseURL: "https://llm.example.com/v1", LLMModel: "m", LLMAPIKey: "llm-secret",
		EmbeddingAPIKey: "emb-secret", Timezone: "Europe/Amsterdam", DraftCreationEnabled: true,
	}
}

// asPatch is s as a PUT body naming every field, secrets in plaintext and
// an unset port (0) as null, as View shows it.
func asPatch(t *testing.T, s Settings) Patch {
	t.Helper()
	p := Patch{}
	for _, f := range fields() {
		var v any
		switch x := f.ptr(&s).(type) {
		case *string:
			v = *x
		case *int:
			if *x != 0 {
				v = *x
			}
		case *bool:
			v = *x
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		p[f.name] = b
	}
	return p
}

// FuzzSettingsPatch feeds any body to the decoding and validation PUT
// /api/v1/settings does (DecodePatch, then the checks Update makes, here
// through Apply). A refusal is a *ValidationError naming the body or a
// member of the patch, the same one every time. An accepted patch changes
// only the fields it names (a masked secret not at all), applying it twice
// is applying it once, the values it leaves re-validate and read back the
// same, and View never shows a secret.
//
// Seed corpus: testdata/fuzz/FuzzSettingsPatch.
func FuzzSettingsPatch(f *testing.F) {
	base := fullSettings()
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := DecodePatch(body)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != "body" {
				t.Fatalf("error %T %q does not name the body", err, err)
			}
			return
		}
		got, err := Apply(base, p)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Message == "" {
				t.Fatalf("error %T %q is not a ValidationError", err, err)
			}
			if _, named := p[ve.Field]; !named {
				t.Fatalf("error %q names %q, not a member of the patch", err, ve.Field)
			}
			if _, err2 := Apply(base, p); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("errors differ between runs: %v, %v", err, err2)
			}
			return
		}

		// Only the named fields change; a masked secret does not.
		for _, fl := range fields() {
			raw, named := p[fl.name]
			masked := fl.secret && string(raw) == strconv.Quote(Mask)
			b, a := reflect.ValueOf(fl.ptr(&base)).Elem(), reflect.ValueOf(fl.ptr(&got)).Elem()
			if (!named || masked) && !reflect.DeepEqual(b.Interface(), a.Interface()) {
				t.Fatalf("%s changed from %v to %v without being named", fl.name, b, a)
			}
		}

		twice, err := Apply(got, p)
		if err != nil || twice != got {
			t.Fatalf("applying the patch again: %v, %+v != %+v", err, twice, got)
		}
		// The result, written out in full, validates and reads back equal.
		again, err := Apply(Settings{}, asPatch(t, got))
		if err != nil {
			t.Fatalf("the result does not validate: %v (%+v)", err, got)
		}
		if again != got {
			t.Fatalf("the result does not read back:\n%+v\n%+v", got, again)
		}

		view := View(got)
		for _, fl := range fields() {
			if fl.secret && view[fl.name] != Mask && view[fl.name] != "" {
				t.Fatalf("View shows secret %s as %q", fl.name, view[fl.name])
			}
		}
	})
}
