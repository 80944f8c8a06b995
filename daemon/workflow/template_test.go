package workflow

import (
	"strings"
	"testing"
	"time"
)

func testEnv(t testing.TB) *renderEnv {
	ams, err := time.LoadLocation("Europe/Amsterdam")
	if err != nil {
		t.Fatal(err)
	}
	return &renderEnv{
		trigger: TriggerInput{
			Markdown: "# Thread\n<<step_output.s1>> from the mail",
			Email: &Email{MessageID: "<m1@example.com>", From: "Ann <ann@example.com>", To: "me@example.com",
				Subject: "Quote", Date: "Mon, 6 Jan 2025 10:00:00 +0000", Body: "Hello <<trigger_output>>", UID: 42, Mailbox: "INBOX"},
		},
		outputs: map[string]string{"s1": "yes <<trigger.subject>>", "s2": ""},
		// 23:30 UTC on Sunday 5 January 2025 is already Monday in Amsterdam.
		now: time.Date(2025, 1, 5, 23, 30, 0, 0, time.UTC),
		loc: ams,
	}
}

func TestRender(t *testing.T) {
	cases := []struct {
		name, tmpl, want string
	}{
		{"plain", "no placeholders", "no placeholders"},
		{"trigger output", "In: <<trigger_output>>.", "In: # Thread\n<<step_output.s1>> from the mail."},
		{"trigger fields", "<<trigger.message_id>>|<<trigger.from>>|<<trigger.to>>|<<trigger.subject>>|<<trigger.date>>|<<trigger.uid>>|<<trigger.mailbox>>",
			"<m1@example.com>|Ann <ann@example.com>|me@example.com|Quote|Mon, 6 Jan 2025 10:00:00 +0000|42|INBOX"},
		{"body is not expanded again", "<<trigger.body>>", "Hello <<trigger_output>>"},
		{"step output is not expanded again", "[<<step_output.s1>>]", "[yes <<trigger.subject>>]"},
		{"empty step output", "[<<step_output.s2>>]", "[]"},
		{"current date in the user's zone", "<<CURRENT_DATE>>", "2025-01-06 (Monday)"},
		{"current date in a named zone", "<<CURRENT_DATE.America/New_York>>", "2025-01-05 (Sunday)"},
		{"current date UTC", "<<CURRENT_DATE.UTC>>", "2025-01-05 (Sunday)"},
		{"adjacent", "<<trigger.uid>><<trigger.uid>>", "4242"},
		{"literals", "a << b >> c <<EOF <<>> <<<trigger.uid>>>", "a << b >> c <<EOF <<>> <42>"},
		{"unknown kept", "<<nope>> <<step_output.missing>>", "<<nope>> <<step_output.missing>>"},
		{"unterminated", "<<trigger_output", "<<trigger_output"},
		{"line break in argument", "<<step_output.s\n1>>", "<<step_output.s\n1>>"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := render(c.tmpl, testEnv(t)); got != c.want {
				t.Errorf("render(%q) = %q, want %q", c.tmpl, got, c.want)
			}
		})
	}
	t.Run("no email", func(t *testing.T) {
		env := testEnv(t)
		env.trigger.Email = nil
		if got := render("[<<trigger.subject>>][<<trigger.uid>>]", env); got != "[][]" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("nil location is UTC", func(t *testing.T) {
		env := testEnv(t)
		env.loc = nil
		if got := render("<<CURRENT_DATE>>", env); got != "2025-01-05 (Sunday)" {
			t.Errorf("got %q", got)
		}
	})
}

func TestRenderArguments(t *testing.T) {
	got, err := renderArguments([]byte(`{"id":"<<trigger.message_id>>","n":1.50,"deep":[{"s":"<<step_output.s1>>"},true,null]}`), testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"deep":[{"s":"yes <<trigger.subject>>"},true,null],"id":"<m1@example.com>","n":1.50}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// FuzzRender checks that rendering never panics, is a single pass (a value is
// inserted verbatim, whatever it contains), leaves text without placeholders
// alone, and that validating a template is idempotent.
func FuzzRender(f *testing.F) {
	f.Add("<<trigger_output>>", "<<step_output.s1>>", "out")
	f.Add("a <<step_output.s1>> b <<CURRENT_DATE>> <<CURRENT_DATE.Europe/Amsterdam>>", "md", "<<trigger_output>>")
	f.Add("<<trigger.subject>><<<>>>>", "", "")
	f.Add("<<step_output.s1", "x", "y")
	f.Add("<<CURRENT_DATE.../../etc/passwd>>", "x", "y")
	f.Fuzz(func(t *testing.T, tmpl, markdown, output string) {
		env := &renderEnv{
			trigger: TriggerInput{Markdown: markdown, Email: &Email{Subject: output, From: markdown}},
			outputs: map[string]string{"s1": output},
			now:     time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		}
		got := render(tmpl, env)
		if !strings.Contains(tmpl, "<<") && got != tmpl {
			t.Fatalf("render changed %q to %q", tmpl, got)
		}
		wrapped := render("A<<step_output.s1>>B<<trigger_output>>C", env)
		if wrapped != "A"+output+"B"+markdown+"C" {
			t.Fatalf("values not inserted verbatim: %q", wrapped)
		}
		resolve := func(ref string) (string, string) {
			if ref == "s1" || ref == "first" {
				return "s1", ""
			}
			return "", "unknown step"
		}
		checked, msg := checkTemplate(tmpl, resolve)
		if msg == "" {
			again, msg2 := checkTemplate(checked, resolve)
			if msg2 != "" || again != checked {
				t.Fatalf("checkTemplate not idempotent: %q -> %q -> %q (%s)", tmpl, checked, again, msg2)
			}
			// Every placeholder of a valid template expands.
			for _, p := range scanPlaceholders(checked) {
				if _, ok := env.value(p); !ok {
					t.Fatalf("valid template %q: %s does not expand", checked, p.raw(checked))
				}
			}
		}
	})
}
