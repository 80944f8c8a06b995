package logs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

var backends = []struct {
	name string
	url  func(tb testing.TB) string
}{
	{"sqlite", func(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/inboxd.db" }},
	{"postgres", testsvc.Postgres},
}

// each runs fn on a fresh, migrated database of every backend.
func each(t *testing.T, fn func(t *testing.T, s *logs.Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			db, err := sqldb.Open(ctx, b.url(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			if err := db.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			fn(t, logs.NewStore(db))
		})
	}
}

var (
	ctx  = context.Background()
	base = time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC)
)

func insert(t *testing.T, s *logs.Store, u userid.ID, e logs.Entry) logs.Entry {
	t.Helper()
	got, err := s.Insert(ctx, u, e)
	if err != nil {
		t.Fatalf("insert %+v: %v", e, err)
	}
	return got
}

func ids(es []logs.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func list(t *testing.T, s *logs.Store, u userid.ID, f logs.Filter) []logs.Entry {
	t.Helper()
	p, err := s.List(ctx, u, f)
	if err != nil {
		t.Fatalf("list %+v: %v", f, err)
	}
	return p.Items
}

// sameEntry compares two entries field by field (messages as JSON values).
func sameEntry(t *testing.T, got, want logs.Entry) {
	t.Helper()
	gm, wm := got.Messages, want.Messages
	got.Messages, want.Messages = nil, nil
	if !got.StartTime.Equal(want.StartTime) || !got.EndTime.Equal(want.EndTime) {
		t.Errorf("times: got %v..%v, want %v..%v", got.StartTime, got.EndTime, want.StartTime, want.EndTime)
	}
	got.StartTime, want.StartTime, got.EndTime, want.EndTime = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("entry\n got %+v\nwant %+v", got, want)
	}
	var g, w any
	if err := json.Unmarshal(gm, &g); err != nil {
		t.Fatalf("messages %q: %v", gm, err)
	}
	if err := json.Unmarshal(wm, &w); err != nil {
		t.Fatalf("messages %q: %v", wm, err)
	}
	if gj, wj := mustJSON(g), mustJSON(w); gj != wj {
		t.Errorf("messages: got %s, want %s", gj, wj)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestInsertGetUpdate(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		before := time.Now().Add(-time.Second)
		e := insert(t, s, a, logs.Entry{LogType: logs.TypeCustomLLM, WorkflowID: "wf-1", WorkflowInstanceID: "run-1",
			WorkflowName: "Quotes", StepID: "st-1", StepInstanceID: "sr-1", StepName: "Draft", ReferenceString: "ref"})
		if _, ok := parseUUID(e.ID); !ok {
			t.Errorf("assigned id %q is not a UUID", e.ID)
		}
		if e.UserID != a || string(e.Messages) != "[]" || e.StartTime.Before(before) || e.StartTime.Location() != time.UTC {
			t.Errorf("defaults: %+v", e)
		}
		got, err := s.Get(ctx, a, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		sameEntry(t, got, e)

		// Upper case ids and explicit fields round-trip.
		msgs := json.RawMessage(`[{"role":"user","content":"hi ünïcode"},{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"imap-draft_reply","arguments":"{\"x\":1}"}]}]`)
		id := strings.ToUpper(userid.New().String())
		e2 := insert(t, s, a, logs.Entry{ID: id, LogType: logs.TypeCustomAgent, Messages: msgs, NeedsReview: true,
			Feedback: "meh", StartTime: base, EndTime: base.Add(1500 * time.Millisecond), PromptTokens: 10,
			CompletionTokens: 5, TotalTokens: 15, TotalCost: 0.0125, Model: "gpt-4o-mini"})
		if e2.ID != strings.ToLower(id) {
			t.Errorf("id %q not canonical", e2.ID)
		}
		got, err = s.Get(ctx, a, id)
		if err != nil {
			t.Fatal(err)
		}
		sameEntry(t, got, e2)
		if _, err := s.Insert(ctx, a, logs.Entry{ID: e2.ID, LogType: logs.TypeTool}); !errors.Is(err, logs.ErrExists) {
			t.Errorf("duplicate id: %v, want ErrExists", err)
		}

		// Update records the outcome; nil messages are left alone.
		e.EndTime, e.Messages, e.PromptTokens, e.CompletionTokens, e.TotalTokens, e.TotalCost, e.Model =
			e.StartTime.Add(time.Minute), json.RawMessage(`[{"role":"user","content":"x"}]`), 1, 2, 3, 0.5, "m1"
		if err := s.Update(ctx, a, e); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(ctx, a, e.ID)
		sameEntry(t, got, e)
		e.Messages, e.Model = nil, "m2"
		if err := s.Update(ctx, a, e); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(ctx, a, e.ID)
		if string(got.Messages) != `[{"role":"user","content":"x"}]` || got.Model != "m2" {
			t.Errorf("after update with nil messages: %s %q", got.Messages, got.Model)
		}

		// Refusals.
		for _, bad := range []struct {
			e     logs.Entry
			field string
		}{
			{logs.Entry{LogType: "workflow_agent"}, "log_type"},
			{logs.Entry{LogType: ""}, "log_type"},
			{logs.Entry{LogType: logs.TypeTool, Messages: json.RawMessage(`[{`)}, "messages"},
			{logs.Entry{LogType: logs.TypeTool, ID: "not-a-uuid"}, "id"},
		} {
			_, err := s.Insert(ctx, a, bad.e)
			var ie *logs.InvalidError
			if !errors.Is(err, logs.ErrInvalid) || !errors.As(err, &ie) || ie.Field != bad.field {
				t.Errorf("insert %+v: %v, want ErrInvalid on %s", bad.e, err, bad.field)
			}
		}
		if err := s.Update(ctx, a, logs.Entry{ID: e.ID, Messages: json.RawMessage(`nope`)}); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("update with bad messages: %v", err)
		}
		if _, err := s.Insert(ctx, userid.ID{}, logs.Entry{LogType: logs.TypeTool}); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user insert: %v", err)
		}
		if _, err := s.Get(ctx, userid.ID{}, e.ID); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user get: %v", err)
		}
		if _, err := s.List(ctx, userid.ID{}, logs.Filter{}); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user list: %v", err)
		}
		for _, id := range []string{userid.New().String(), "nope", "", "'; DROP TABLE logs; --"} {
			if _, err := s.Get(ctx, a, id); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("get %q: %v, want ErrNotFound", id, err)
			}
			if err := s.Update(ctx, a, logs.Entry{ID: id}); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("update %q: %v, want ErrNotFound", id, err)
			}
		}
	})
}

func parseUUID(s string) (userid.ID, bool) {
	id, err := userid.Parse(s)
	return id, err == nil && id.String() == s
}

// run inserts a workflow run for u: a workflow row and a row per step type,
// and returns the workflow row and the step rows in order.
func run(t *testing.T, s *logs.Store, u userid.ID, wf, name, instance string, start time.Time, model string) (logs.Entry, []logs.Entry) {
	t.Helper()
	parent := insert(t, s, u, logs.Entry{LogType: logs.TypeWorkflow, WorkflowID: wf, WorkflowName: name,
		WorkflowInstanceID: instance, StartTime: start, EndTime: start.Add(time.Minute),
		PromptTokens: 1000, TotalTokens: 1000, TotalCost: 100}) // a summary: never counted
	var steps []logs.Entry
	for i, typ := range []string{logs.TypeTriggerCheck, logs.TypeCustomLLM, logs.TypeCustomAgent, logs.TypeStopChecker, logs.TypeTool} {
		steps = append(steps, insert(t, s, u, logs.Entry{LogType: typ, WorkflowID: wf, WorkflowName: name,
			WorkflowInstanceID: instance, StepID: fmt.Sprintf("step-%d", i), StepInstanceID: fmt.Sprintf("%s-s%d", instance, i),
			StepName: typ, StartTime: start.Add(time.Duration(i+1) * time.Second),
			PromptTokens: 10 * (i + 1), CompletionTokens: i + 1, TotalTokens: 11 * (i + 1), TotalCost: 0.25 * float64(i+1), Model: model}))
	}
	return parent, steps
}

func TestUserIsolation(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a, b := userid.New(), userid.New()
		pa, sa := run(t, s, a, "wf-a", "A's", "run-a", base, "m-a")
		shared := "run-shared" // the same instance id under both users must not mix
		run(t, s, a, "wf-x", "A's x", shared, base.Add(time.Hour), "m-a")
		pb, _ := run(t, s, b, "wf-x", "B's x", shared, base.Add(2*time.Hour), "m-b")

		for _, id := range append(ids(sa), pa.ID) {
			if _, err := s.Get(ctx, b, id); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("B gets A's %s: %v", id, err)
			}
			if err := s.Update(ctx, b, logs.Entry{ID: id, Model: "hijack"}); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("B updates A's %s: %v", id, err)
			}
			if _, err := s.Review(ctx, b, id, true, "hijack"); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("B reviews A's %s: %v", id, err)
			}
			if got, err := s.Get(ctx, a, id); err != nil || got.Model == "hijack" || got.Feedback != "" || got.NeedsReview {
				t.Errorf("A's %s after B's attempts: %+v %v", id, got, err)
			}
		}
		if _, err := s.Usage(ctx, b, "run-a"); !errors.Is(err, logs.ErrNotFound) {
			t.Errorf("B's usage of A's run: %v", err)
		}

		bList := list(t, s, b, logs.Filter{Limit: logs.MaxLimit})
		if len(bList) != 6 {
			t.Errorf("B lists %d rows, want 6", len(bList))
		}
		for _, e := range bList {
			if e.UserID != b {
				t.Errorf("B's list has %+v", e)
			}
		}
		if got := list(t, s, b, logs.Filter{InstanceID: "run-a"}); len(got) != 0 {
			t.Errorf("B filters on A's instance: %v", ids(got))
		}
		g, err := s.Grouped(ctx, b, logs.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Items) != 1 || g.Items[0].ID != pb.ID || len(g.Items[0].Children) != 5 {
			t.Fatalf("B's grouped: %+v", g)
		}
		for _, c := range g.Items[0].Children {
			if c.UserID != b {
				t.Errorf("B's grouped child %+v", c)
			}
		}
		c, err := s.Costs(ctx, b, time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Rows != 5 || len(c.ByModel) != 1 || c.ByModel[0].Model != "m-b" || len(c.ByWorkflow) != 1 || c.ByWorkflow[0].WorkflowName != "B's x" {
			t.Errorf("B's costs: %+v", c)
		}
		u, err := s.Usage(ctx, b, shared)
		if err != nil {
			t.Fatal(err)
		}
		if u.Rows != 5 || u.WorkflowName != "B's x" || u.PromptTokens != 150 {
			t.Errorf("B's usage of the shared instance id: %+v", u)
		}
	})
}

// TestPaging walks 120 rows (groups of equal start times, another user's rows
// interleaved) in pages of several sizes: every row once, in order.
func TestPaging(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a, b := userid.New(), userid.New()
		want := map[string]logs.Entry{}
		for i := range 120 {
			start := base.Add(time.Duration(i/4) * time.Second) // 4 rows per start time
			e := insert(t, s, a, logs.Entry{LogType: logs.TypeCustomLLM, StartTime: start, StepName: fmt.Sprint(i)})
			want[e.ID] = e
			if i%3 == 0 {
				insert(t, s, b, logs.Entry{LogType: logs.TypeCustomLLM, StartTime: start})
			}
		}
		for _, limit := range []int{0, 1, 7, 50, 119, 120, 500, 10000} {
			seen := map[string]bool{}
			var all []logs.Entry
			cursor, pages := "", 0
			for {
				p, err := s.List(ctx, a, logs.Filter{Limit: limit, Cursor: cursor})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				all = append(all, p.Items...)
				if p.NextCursor == "" {
					break
				}
				if pages > 200 {
					t.Fatal("endless paging")
				}
				cursor = p.NextCursor
			}
			for _, e := range all {
				if _, ok := want[e.ID]; !ok {
					t.Fatalf("limit %d: foreign row %+v", limit, e)
				}
				if seen[e.ID] {
					t.Fatalf("limit %d: %s twice", limit, e.ID)
				}
				seen[e.ID] = true
			}
			if len(all) != 120 {
				t.Fatalf("limit %d: %d rows, want 120", limit, len(all))
			}
			for i := 1; i < len(all); i++ {
				p, c := all[i-1], all[i]
				if c.StartTime.After(p.StartTime) || c.StartTime.Equal(p.StartTime) && c.ID >= p.ID {
					t.Fatalf("limit %d: out of order at %d: %v %s then %v %s", limit, i, p.StartTime, p.ID, c.StartTime, c.ID)
				}
			}
			eff := limit
			switch {
			case limit == 0:
				eff = logs.DefaultLimit
			case limit > logs.MaxLimit:
				eff = logs.MaxLimit
			}
			if wantPages := (120 + eff - 1) / eff; pages != wantPages {
				t.Errorf("limit %d: %d pages, want %d", limit, pages, wantPages)
			}
		}

		// Rows added while paging (newer, and with the start time of the
		// page boundary) do not shift the pages still to come.
		p1, err := s.List(ctx, a, logs.Filter{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		insert(t, s, a, logs.Entry{LogType: logs.TypeTool, StartTime: base.Add(time.Hour)})
		p2, err := s.List(ctx, a, logs.Filter{Limit: 10, Cursor: p1.NextCursor})
		if err != nil {
			t.Fatal(err)
		}
		full := list(t, s, a, logs.Filter{Limit: 500})
		if strings.Join(ids(p2.Items), ",") != strings.Join(ids(full[11:21]), ",") {
			t.Errorf("second page after an insert:\n%v\nwant\n%v", ids(p2.Items), ids(full[11:21]))
		}

		for _, bad := range []string{"x", "!!!", "MTIzLG5vcGU", "bm9jb21tYQ"} {
			_, err := s.List(ctx, a, logs.Filter{Cursor: bad})
			var ie *logs.InvalidError
			if !errors.As(err, &ie) || ie.Field != "cursor" {
				t.Errorf("cursor %q: %v", bad, err)
			}
		}
		if _, err := s.List(ctx, a, logs.Filter{Limit: -1}); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("negative limit: %v", err)
		}
	})
}

func TestFilters(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		p1, s1 := run(t, s, a, "wf-1", "One", "run-1", base, "m")
		p2, s2 := run(t, s, a, "wf-2", "Two", "run-2", base.Add(24*time.Hour), "m")
		if _, err := s.Review(ctx, a, s2[2].ID, true, "wrong tone"); err != nil {
			t.Fatal(err)
		}
		yes, no := true, false
		cases := []struct {
			name string
			f    logs.Filter
			want []logs.Entry
		}{
			{"type", logs.Filter{LogType: logs.TypeWorkflow}, []logs.Entry{p2, p1}},
			{"type agent", logs.Filter{LogType: logs.TypeCustomAgent}, []logs.Entry{s2[2], s1[2]}},
			{"workflow", logs.Filter{WorkflowID: "wf-1"}, append([]logs.Entry{}, s1[4], s1[3], s1[2], s1[1], s1[0], p1)},
			{"instance+type", logs.Filter{InstanceID: "run-2", LogType: logs.TypeTool}, []logs.Entry{s2[4]}},
			{"needs review", logs.Filter{NeedsReview: &yes}, []logs.Entry{s2[2]}},
			{"no review", logs.Filter{NeedsReview: &no, InstanceID: "run-2", LogType: logs.TypeCustomAgent}, nil},
			{"since", logs.Filter{Since: base.Add(24*time.Hour + 5*time.Second)}, []logs.Entry{s2[4]}},
			{"until", logs.Filter{Until: base.Add(time.Second)}, []logs.Entry{p1}},
			{"window", logs.Filter{Since: base.Add(2 * time.Second), Until: base.Add(4 * time.Second)}, []logs.Entry{s1[2], s1[1]}},
			{"none", logs.Filter{WorkflowID: "wf-3"}, nil},
		}
		for _, tc := range cases {
			got := list(t, s, a, tc.f)
			if strings.Join(ids(got), ",") != strings.Join(ids(tc.want), ",") {
				t.Errorf("%s: got %v, want %v", tc.name, ids(got), ids(tc.want))
			}
		}
		if _, err := s.List(ctx, a, logs.Filter{LogType: "bogus"}); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("bad type: %v", err)
		}
		if _, err := s.List(ctx, a, logs.Filter{Since: base, Until: base}); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("empty window: %v", err)
		}
	})
}

func TestGrouped(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		p1, s1 := run(t, s, a, "wf-1", "One", "run-1", base, "m")
		solo := insert(t, s, a, logs.Entry{LogType: logs.TypeCustomLLM, StartTime: base.Add(time.Hour)})
		orphan := insert(t, s, a, logs.Entry{LogType: logs.TypeCustomAgent, WorkflowInstanceID: "run-gone", StartTime: base.Add(2 * time.Hour)})
		p2, s2 := run(t, s, a, "wf-1", "One", "run-2", base.Add(3*time.Hour), "m")
		// A step row written before its run's workflow row still hangs under it.
		early := insert(t, s, a, logs.Entry{LogType: logs.TypeTool, WorkflowInstanceID: "run-2", StartTime: base.Add(3*time.Hour - time.Second)})
		s2 = append([]logs.Entry{early}, s2...)

		g, err := s.Grouped(ctx, a, logs.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		type shape struct {
			parent   string
			children []string
		}
		want := []shape{{p2.ID, ids(s2)}, {orphan.ID, nil}, {solo.ID, nil}, {p1.ID, ids(s1)}}
		if len(g.Items) != len(want) || g.NextCursor != "" {
			t.Fatalf("grouped: %d parents (next %q), want %d", len(g.Items), g.NextCursor, len(want))
		}
		for i, w := range want {
			got := g.Items[i]
			if got.ID != w.parent || strings.Join(ids(got.Children), ",") != strings.Join(w.children, ",") {
				t.Errorf("group %d: %s %v, want %s %v", i, got.ID, ids(got.Children), w.parent, w.children)
			}
			if got.Children == nil {
				t.Errorf("group %d: nil children (JSON null)", i)
			}
		}
		// JSON: the parent's fields and "children".
		var js []map[string]any
		if err := json.Unmarshal([]byte(mustJSON(g.Items)), &js); err != nil {
			t.Fatal(err)
		}
		if js[0]["id"] != p2.ID || js[0]["log_type"] != "workflow" || len(js[0]["children"].([]any)) != 6 {
			t.Errorf("grouped JSON: %v", js[0])
		}

		// Paging over parents, one at a time.
		var got []string
		cursor := ""
		for range 10 {
			p, err := s.Grouped(ctx, a, logs.Filter{Limit: 1, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range p.Items {
				got = append(got, it.ID+fmt.Sprint(len(it.Children)))
			}
			if cursor = p.NextCursor; cursor == "" {
				break
			}
		}
		if w := []string{p2.ID + "6", orphan.ID + "0", solo.ID + "0", p1.ID + "5"}; strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("paged grouped: %v, want %v", got, w)
		}
		// Filters select parents.
		g, err = s.Grouped(ctx, a, logs.Filter{InstanceID: "run-1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Items) != 1 || g.Items[0].ID != p1.ID || len(g.Items[0].Children) != 5 {
			t.Errorf("grouped by instance: %+v", g.Items)
		}
		if g, err := s.Grouped(ctx, userid.New(), logs.Filter{}); err != nil || len(g.Items) != 0 || g.Items == nil {
			t.Errorf("empty grouped: %+v %v", g, err)
		}
	})
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestCosts(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		day1 := time.Date(2025, 3, 14, 23, 59, 0, 0, time.UTC)
		day2 := day1.Add(2 * time.Hour) // 2025-03-15
		run(t, s, a, "wf-1", "Old name", "run-1", day1, "big")
		run(t, s, a, "wf-1", "New name", "run-2", day2, "small")
		run(t, s, a, "wf-2", "Two", "run-3", day2.Add(time.Hour), "big")
		insert(t, s, a, logs.Entry{LogType: logs.TypeCustomLLM, StartTime: day2, Model: "small", PromptTokens: 7, TotalTokens: 7, TotalCost: 1})
		insert(t, s, userid.New(), logs.Entry{LogType: logs.TypeCustomLLM, StartTime: day2, Model: "big", TotalCost: 1000})

		c, err := s.Costs(ctx, a, time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		// A run's steps: prompt 10+20+30+40+50 = 150, completion 15, total 165, cost 3.75.
		if c.Rows != 16 || c.PromptTokens != 3*150+7 || c.CompletionTokens != 45 || c.TotalTokens != 3*165+7 || !near(c.TotalCost, 3*3.75+1) {
			t.Errorf("totals: %+v", c.Totals)
		}
		if len(c.ByModel) != 2 || c.ByModel[0].Model != "big" || !near(c.ByModel[0].TotalCost, 7.5) || c.ByModel[0].Rows != 10 ||
			c.ByModel[1].Model != "small" || !near(c.ByModel[1].TotalCost, 4.75) || c.ByModel[1].PromptTokens != 157 {
			t.Errorf("by model: %+v", c.ByModel)
		}
		if len(c.ByWorkflow) != 2 || c.ByWorkflow[0].WorkflowID != "wf-1" || c.ByWorkflow[0].WorkflowName != "New name" ||
			!near(c.ByWorkflow[0].TotalCost, 7.5) || c.ByWorkflow[1].WorkflowID != "wf-2" || c.ByWorkflow[1].Rows != 5 {
			t.Errorf("by workflow: %+v", c.ByWorkflow)
		}
		// run-1's steps start at 23:59:01..05, all on day 1.
		if len(c.ByDay) != 2 || c.ByDay[0].Day != "2025-03-14" || c.ByDay[0].Rows != 5 || c.ByDay[1].Day != "2025-03-15" || c.ByDay[1].Rows != 11 {
			t.Errorf("by day: %+v", c.ByDay)
		}

		c, err = s.Costs(ctx, a, day2, day2.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if c.Rows != 6 || !near(c.TotalCost, 4.75) || len(c.ByWorkflow) != 1 || len(c.ByDay) != 1 || !c.Since.Equal(day2) {
			t.Errorf("windowed costs: %+v", c)
		}
		c, err = s.Costs(ctx, userid.New(), time.Time{}, time.Time{})
		if err != nil || c.Rows != 0 || c.ByModel == nil || c.ByWorkflow == nil || c.ByDay == nil {
			t.Errorf("no rows: %+v %v", c, err)
		}
		if _, err := s.Costs(ctx, a, day2, day1); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("backwards window: %v", err)
		}
	})
}

func TestUsage(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		_, steps := run(t, s, a, "wf-1", "One", "run-1", base, "m")
		run(t, s, a, "wf-1", "One", "run-2", base.Add(time.Hour), "m")
		u, err := s.Usage(ctx, a, "run-1")
		if err != nil {
			t.Fatal(err)
		}
		if u.InstanceID != "run-1" || u.WorkflowID != "wf-1" || u.WorkflowName != "One" || u.Rows != 5 ||
			u.PromptTokens != 150 || u.CompletionTokens != 15 || u.TotalTokens != 165 || !near(u.TotalCost, 3.75) {
			t.Errorf("usage: %+v", u)
		}
		if len(u.Steps) != 5 {
			t.Fatalf("steps: %+v", u.Steps)
		}
		for i, st := range u.Steps {
			if st.ID != steps[i].ID || st.StepName != steps[i].StepName || st.PromptTokens != steps[i].PromptTokens || !st.StartTime.Equal(steps[i].StartTime) {
				t.Errorf("step %d: %+v, want %+v", i, st, steps[i])
			}
		}
		for _, id := range []string{"run-3", ""} {
			if _, err := s.Usage(ctx, a, id); !errors.Is(err, logs.ErrNotFound) {
				t.Errorf("usage of %q: %v", id, err)
			}
		}
	})
}

func TestReview(t *testing.T) {
	each(t, func(t *testing.T, s *logs.Store) {
		a := userid.New()
		e := insert(t, s, a, logs.Entry{LogType: logs.TypeCustomAgent, Messages: json.RawMessage(`[1]`)})
		got, err := s.Review(ctx, a, strings.ToUpper(e.ID), true, "too formal")
		if err != nil {
			t.Fatal(err)
		}
		if !got.NeedsReview || got.Feedback != "too formal" || string(got.Messages) != "[1]" {
			t.Errorf("after review: %+v", got)
		}
		yes := true
		if l := list(t, s, a, logs.Filter{NeedsReview: &yes}); len(l) != 1 || l[0].ID != e.ID {
			t.Errorf("review queue: %v", ids(l))
		}
		if got, err = s.Review(ctx, a, e.ID, false, ""); err != nil || got.NeedsReview || got.Feedback != "" {
			t.Errorf("clearing review: %+v %v", got, err)
		}
		long := strings.Repeat("é", logs.MaxFeedbackLen)
		if got, err = s.Review(ctx, a, e.ID, false, long); err != nil || got.Feedback != long {
			t.Errorf("feedback of the maximum length: %v", err)
		}
		if _, err := s.Review(ctx, a, e.ID, false, long+"x"); !errors.Is(err, logs.ErrInvalid) {
			t.Errorf("feedback too long: %v", err)
		}
		if _, err := s.Review(ctx, a, "nope", true, ""); !errors.Is(err, logs.ErrNotFound) {
			t.Errorf("review of a malformed id: %v", err)
		}
	})
}
