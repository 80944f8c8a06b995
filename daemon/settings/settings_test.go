package settings

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func newStore(t *testing.T) (*Store, kv.Store) {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	return NewStore(store, box), store
}

func TestValidate(t *testing.T) {
	cases := []struct {
		body  string
		field string // "" = valid
	}{
		{`{"imap_server":"imap.example.com","imap_port":993,"imap_security":"starttls"}`, ""},
		{`{"imap_server":"10.0.0.1"}`, ""},
		{`{"imap_port":"143"}`, ""},
		{`{"imap_port":65536}`, "imap_port"},
		{`{"imap_port":1.5}`, "imap_port"},
		{`{"imap_server":"imap example.com"}`, "imap_server"},
		{`{"imap_server":"imap.example.com:993"}`, "imap_server"},
		{`{"imap_security":"TLS"}`, "imap_security"},
		{`{"timezone":"Europe/Amsterdam"}`, ""},
		{`{"timezone":"Local"}`, "timezone"},
		{`{"timezone":"../../etc/passwd"}`, "timezone"},
		{`{"llm_base_url":"https://openrouter.ai/api/v1"}`, ""},
		{`{"llm_base_url":"openrouter.ai"}`, "llm_base_url"},
		{`{"llm_model":"gpt 4"}`, "llm_model"},
		{`{"draft_creation_enabled":1}`, "draft_creation_enabled"},
		{`{"imap_username":7}`, "imap_username"},
		{`{"IMAP_SERVER":"x"}`, "IMAP_SERVER"},
		{`{"timezone":"UTC"} {}`, "body"},
		{`{"timezone":"UTC"}}`, "body"},
		{"{\"timezone\":\"UTC\"} \n", ""},
	}
	for _, tc := range cases {
		p, err := DecodePatch([]byte(tc.body))
		if err == nil {
			_, err = validate(p)
		}
		var ve *ValidationError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.body, err)
		case tc.field != "" && (err == nil || !asValidation(err, &ve) || ve.Field != tc.field):
			t.Errorf("%s: error %v, want one naming %s", tc.body, err, tc.field)
		}
	}
}

func asValidation(err error, target **ValidationError) bool {
	ve, ok := err.(*ValidationError)
	if ok {
		*target = ve
	}
	return ok
}

func TestStoreRoundTripAndSecrets(t *testing.T) {
	ctx := context.Background()
	st, store := newStore(t)
	a, b := userid.New(), userid.New()
	patch := Patch{
		"imap_server":   json.RawMessage(`"imap.example.com"`),
		"imap_password": json.RawMessage(`"pa55"`),
		"llm_api_key":   json.RawMessage(`"sk-live"`),
		"imap_port":     json.RawMessage(`143`),
	}
	if err := st.Update(ctx, a, patch); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got.IMAPPassword != "pa55" || got.LLMAPIKey != "sk-live" || got.IMAPPort != 143 {
		t.Fatalf("round trip: %+v", got)
	}
	view := View(got)
	if view["imap_password"] != Mask || view["llm_api_key"] != Mask || view["embedding_api_key"] != "" {
		t.Errorf("view: %v", view)
	}
	// A ciphertext copied to another user's key does not decrypt there.
	raw, err := store.Get(ctx, a.Key("imap_password"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Set(ctx, b.Key("imap_password"), raw, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, b); err == nil || !strings.Contains(err.Error(), "imap_password") {
		t.Errorf("B reading A's copied ciphertext: %v, want a decrypt error naming the field", err)
	}
	var zero userid.ID
	if _, err := st.Get(ctx, zero); err != userid.ErrZero {
		t.Errorf("Get(zero) = %v", err)
	}
	if err := st.Update(ctx, zero, patch); err != userid.ErrZero {
		t.Errorf("Update(zero) = %v", err)
	}
}

func TestIMAPAccountDefaults(t *testing.T) {
	for _, tc := range []struct {
		s    Settings
		port int
		sec  string
	}{
		{Settings{IMAPServer: "h"}, 993, "tls"},
		{Settings{IMAPServer: "h", IMAPSecurity: "starttls"}, 143, "starttls"},
		{Settings{IMAPServer: "h", IMAPSecurity: "none", IMAPPort: 1143}, 1143, "none"},
	} {
		a := tc.s.IMAPAccount()
		if a.Port != tc.port || string(a.Security) != tc.sec {
			t.Errorf("%+v -> %+v", tc.s, a)
		}
	}
}
