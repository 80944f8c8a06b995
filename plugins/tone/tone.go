// Package tone is the first-party "tone" plugin: get_tone_of_voice_profile
// answers how the user writes in a language, from the tone-of-voice profiles
// inboxd's background job derives from the user's sent mail (kept under
// user:{uuid}:tone_of_voice_profile as {language: profile}). The plugin reads
// them only through the host (sdk.Host.ToneProfile, granted because it
// declares sdk.NeedToneProfile), for the calling user alone.
package tone

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/inboxd/inboxd/sdk"
)

// Name and Version of the plugin.
const (
	Name    = "tone"
	Version = "1.0.0"
)

// noProfile is the answer for a user without profiles.
const noProfile = "no tone of voice profile yet: run POST /api/v1/inbox/tone-of-voice"

// Plugin returns the tone plugin, for `inboxd plugin serve tone`.
func Plugin() sdk.Plugin {
	return sdk.Plugin{
		Name:    Name,
		Version: Version,
		Needs:   []sdk.Need{sdk.NeedToneProfile},
		Tools: []sdk.Tool{{
			Name: "get_tone_of_voice_profile",
			Description: "Get the user's tone of voice in a language: how they write their emails (greeting, length, " +
				"formality, sign-off ...), to write replies that sound like them. Answers the profile text, or an error " +
				"listing the languages that have a profile.",
			InputSchema: []byte(`{"type":"object","properties":{"language":{"type":"string",` +
				`"description":"The language of the email to write, as a code like \"en\" or \"de\" (a name such as ` +
				`\"English\" or a tag such as \"en-US\" also works)."}},"required":["language"],"additionalProperties":false}`),
			Handler: getProfile,
		}},
	}
}

func getProfile(ctx context.Context, call sdk.Call) (sdk.Result, error) {
	var args struct {
		Language string `json:"language"`
	}
	if err := call.Bind(&args); err != nil {
		return sdk.Errorf("get_tone_of_voice_profile: %s", strings.TrimPrefix(err.Error(), "sdk: ")), nil
	}
	if _, ok := sdk.UserFrom(ctx); !ok {
		return sdk.Result{}, errors.New("tone: no user in the call context")
	}
	profiles, err := sdk.HostFrom(ctx).ToneProfile(ctx)
	if err != nil {
		return sdk.Result{}, fmt.Errorf("tone: read profiles: %w", err)
	}
	return answer(profiles, args.Language), nil
}

// answer picks the profile for lang.
func answer(profiles map[string]string, lang string) sdk.Result {
	langs := available(profiles)
	if len(langs) == 0 {
		return sdk.Errorf("%s", noProfile)
	}
	if strings.TrimSpace(lang) == "" {
		return sdk.Errorf("language is required; profiles exist for: %s", strings.Join(langs, ", "))
	}
	key, ok := match(profiles, lang)
	if !ok {
		return sdk.Errorf("no tone of voice profile for language %q; profiles exist for: %s", clip(lang, 40), strings.Join(langs, ", "))
	}
	return sdk.Text(profiles[key])
}

// available lists the languages with a non-empty profile, sorted.
func available(profiles map[string]string) []string {
	var out []string
	for k, v := range profiles {
		if strings.TrimSpace(v) != "" {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// languageCode maps an English (or native) language name to its ISO 639-1
// code, for callers that say "German" where the profiles say "de".
func languageCode(name string) (string, bool) {
	switch name {
	case "english":
		return "en", true
	case "german", "deutsch":
		return "de", true
	case "french", "français", "francais":
		return "fr", true
	case "spanish", "español", "espanol":
		return "es", true
	case "italian", "italiano":
		return "it", true
	case "dutch", "nederlands":
		return "nl", true
	case "portuguese", "português", "portugues":
		return "pt", true
	case "swedish", "svenska":
		return "sv", true
	case "danish", "dansk":
		return "da", true
	case "norwegian", "norsk":
		return "no", true
	case "finnish", "suomi":
		return "fi", true
	case "polish", "polski":
		return "pl", true
	case "czech":
		return "cs", true
	case "russian":
		return "ru", true
	case "ukrainian":
		return "uk", true
	case "turkish":
		return "tr", true
	case "greek":
		return "el", true
	case "japanese":
		return "ja", true
	case "chinese":
		return "zh", true
	case "korean":
		return "ko", true
	case "arabic":
		return "ar", true
	case "hebrew":
		return "he", true
	case "hindi":
		return "hi", true
	}
	return "", false
}

// match finds the profile key for lang: the same key ignoring case and
// spaces, else its primary subtag ("en-US" -> "en", "pt_BR" -> "pt"), else
// the code of a language name ("German" -> "de"), in either direction
// (profiles keyed by name, asked by code).
func match(profiles map[string]string, lang string) (string, bool) {
	norm := func(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
	primary := func(s string) string {
		s = norm(s)
		if i := strings.IndexAny(s, "-_"); i > 0 {
			return s[:i]
		}
		return s
	}
	code := func(s string) string {
		if c, ok := languageCode(norm(s)); ok {
			return c
		}
		return primary(s)
	}
	want := norm(lang)
	for _, try := range []func(string) string{norm, primary, code} {
		for _, k := range available(profiles) {
			if try(k) == try(want) {
				return k, true
			}
		}
	}
	return "", false
}

// clip cuts s to at most n runes.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
