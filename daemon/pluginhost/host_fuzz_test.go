package pluginhost

import (
	"encoding/json"
	"testing"
)

// FuzzIsJSONObject: the cheap check answers as decoding into a map did
// (the check it replaced: valid JSON, an object, not null).
// Seed corpus: testdata/fuzz/FuzzIsJSONObject, and the f.Add seeds.
func FuzzIsJSONObject(f *testing.F) {
	for _, s := range []string{`{}`, ` {"a":1} `, "\t\r\n{}", `{"a":`, `[]`, `null`, `"x"`, `1`, ``, ` `, `{} {}`, `{}x`, `{"a":"\xff"}`, "\ufeff{}", `{"a":{"b":[1,2]}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var obj map[string]json.RawMessage
		want := json.Unmarshal(b, &obj) == nil && obj != nil
		if got := isJSONObject(b); got != want {
			t.Errorf("isJSONObject(%q) = %v, decoding says %v", b, got, want)
		}
	})
}
