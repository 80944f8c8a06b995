package embed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinCatalog(t *testing.T) {
	c, err := LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		provider string
		dims     int
	}{
		"voyage-3.5":             {ProviderVoyage, 2048},
		"text-embedding-3-large": {ProviderOpenAI, 3072},
		"text-embedding-3-small": {ProviderOpenAI, 1536},
		"offline-hash-384":       {ProviderOffline, 384},
	}
	for key, w := range want {
		m, ok := c.Lookup(key)
		if !ok || m.Provider != w.provider || m.Dimensions != w.dims {
			t.Errorf("Lookup(%q) = %+v, %v; want provider %s, %d dims", key, m, ok, w.provider, w.dims)
		}
		if m.InputLimit() <= 0 || m.MaxBatchSize <= 0 {
			t.Errorf("%s: no input or batch limit", key)
		}
	}
	if d := c.Default(); d.Key != "text-embedding-3-large" {
		t.Errorf("default = %q, want text-embedding-3-large (as the original)", d.Key)
	}
	if o := c.Offline(); o.Key != "offline-hash-384" {
		t.Errorf("offline = %q", o.Key)
	}
	if _, ok := c.Lookup("nope"); ok {
		t.Error("Lookup of an unknown key succeeded")
	}
	ms := c.Models()
	ms[0].Key = "mutated"
	if c.Models()[0].Key == "mutated" {
		t.Error("Models returns the catalog's own slice")
	}
}

func TestCatalogValidation(t *testing.T) {
	offline := `{"key":"off","provider":"offline","model_name":"off","dimensions":8,"max_batch_size":4,"default":false}`
	def := `{"key":"oa","provider":"openai","model_name":"m","dimensions":16,"max_batch_size":4,"default":true}`
	cases := []struct {
		name, json, wantErr string
	}{
		{"ok", `{"models":[` + def + `,` + offline + `]}`, ""},
		{"empty", `{"models":[]}`, "no models"},
		{"not json", `{"models":`, "parse catalog"},
		{"trailing", `{"models":[` + def + `,` + offline + `]} {}`, "trailing"},
		{"unknown field", `{"models":[{"key":"x","provider":"offline","model_name":"x","dimensions":8,"max_batch_size":1,"default":true,"dims":3}]}`, "unknown field"},
		{"duplicate key", `{"models":[` + def + `,` + offline + `,` + offline + `]}`, "duplicate model key"},
		{"no default", `{"models":[` + offline + `]}`, "0 models are marked default"},
		{"two defaults", `{"models":[` + def + `,` + strings.Replace(def, `"oa"`, `"ob"`, 1) + `,` + offline + `]}`, "2 models are marked default"},
		{"zero dims", `{"models":[` + strings.Replace(def, `"dimensions":16`, `"dimensions":0`, 1) + `,` + offline + `]}`, "dimensions must be > 0"},
		{"negative dims", `{"models":[` + strings.Replace(def, `"dimensions":16`, `"dimensions":-3`, 1) + `,` + offline + `]}`, "dimensions must be > 0"},
		{"zero batch", `{"models":[` + strings.Replace(def, `"max_batch_size":4`, `"max_batch_size":0`, 1) + `,` + offline + `]}`, "max_batch_size"},
		{"unknown provider", `{"models":[` + strings.Replace(def, `"openai"`, `"cohere"`, 1) + `,` + offline + `]}`, "unknown provider"},
		{"no model name", `{"models":[` + strings.Replace(def, `"model_name":"m"`, `"model_name":""`, 1) + `,` + offline + `]}`, "model_name is empty"},
		{"blank key", `{"models":[` + strings.Replace(def, `"oa"`, `" "`, 1) + `,` + offline + `]}`, "empty or padded"},
		{"no offline", `{"models":[` + def + `]}`, "no offline model"},
		{"input beyond batch", `{"models":[` + strings.Replace(def, `"max_batch_size":4`, `"max_batch_size":4,"max_input_chars":1000,"max_batch_tokens":10`, 1) + `,` + offline + `]}`, "may exceed max_batch_tokens"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseCatalog([]byte(tc.json))
			if tc.wantErr == "" {
				if err != nil || c == nil {
					t.Fatalf("ParseCatalog: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "embed: ") {
				t.Fatalf("ParseCatalog error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestLoadCatalogOverride(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "models.json")
	data := `{"models":[
		{"key":"nomic","provider":"openai_compatible","model_name":"nomic-embed-text","dimensions":768,"max_input_chars":4000,"max_batch_size":32,"default":true,"base_url":"http://127.0.0.1:11434/v1"},
		{"key":"offline-hash-384","provider":"offline","model_name":"offline-hash-384","dimensions":384,"max_batch_size":256,"default":false}]}`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Models()) != 2 || c.Default().Key != "nomic" || c.Default().BaseURL == "" {
		t.Fatalf("override not used: %+v", c.Models())
	}
	if _, ok := c.Lookup("text-embedding-3-large"); ok {
		t.Error("override should replace the built-in catalog, not extend it")
	}
	if _, err := LoadCatalog(filepath.Join(dir, "missing.json")); err == nil || !strings.HasPrefix(err.Error(), "embed: ") {
		t.Errorf("missing override file: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{"models":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCatalog(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("invalid override: error %v should name the file", err)
	}
}

func TestBestAvailable(t *testing.T) {
	builtin, err := LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	// A catalog whose default is Voyage and whose first keyed model is not first.
	custom, err := ParseCatalog([]byte(`{"models":[
		{"key":"small","provider":"openai","model_name":"s","dimensions":8,"max_batch_size":4,"default":false},
		{"key":"voy","provider":"voyage","model_name":"v","dimensions":8,"max_batch_size":4,"default":true},
		{"key":"local","provider":"openai_compatible","model_name":"l","dimensions":8,"max_batch_size":4,"default":false,"base_url":"http://127.0.0.1:1/v1"},
		{"key":"off","provider":"offline","model_name":"off","dimensions":8,"max_batch_size":4,"default":false}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		catalog *Catalog
		keys    ProviderKeys
		want    string
	}{
		{"no keys", builtin, nil, "offline-hash-384"},
		{"no keys (empty set)", builtin, KeysFor(), "offline-hash-384"},
		{"openai key: the default", builtin, KeysFor(ProviderOpenAI), "text-embedding-3-large"},
		{"voyage key: first with a key", builtin, KeysFor(ProviderVoyage), "voyage-3.5"},
		{"both keys: the default wins", builtin, KeysFor(ProviderVoyage, ProviderOpenAI), "text-embedding-3-large"},
		{"unrelated key", builtin, KeysFor("cohere"), "offline-hash-384"},
		{"custom: default keyed", custom, KeysFor(ProviderVoyage, ProviderOpenAI), "voy"},
		{"custom: first keyed in order", custom, KeysFor(ProviderOpenAICompatible, ProviderOpenAI), "small"},
		{"custom: compatible only", custom, KeysFor(ProviderOpenAICompatible), "local"},
		{"custom: none", custom, func(string) bool { return false }, "off"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.catalog.BestAvailable(tc.keys); got.Key != tc.want {
				t.Errorf("BestAvailable = %q, want %q", got.Key, tc.want)
			}
		})
	}
}
