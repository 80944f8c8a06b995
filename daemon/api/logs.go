package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/users"
)

// logRoutes registers the agent log routes. The literal /grouped, /costs and
// /usage/ paths are more specific than /{id}, so the router prefers them.
func (s *Server) logRoutes() {
	s.user("GET /api/v1/logs", s.listLogs)
	s.user("GET /api/v1/logs/grouped", s.groupedLogs)
	s.user("GET /api/v1/logs/costs", s.logCosts)
	s.user("GET /api/v1/logs/usage/{instance_id}", s.logUsage)
	s.user("GET /api/v1/logs/{id}", s.getLog)
	s.user("POST /api/v1/logs/{id}/review", s.reviewLog)
}

// paramError answers 400 naming the query parameter (or body field).
func paramError(w http.ResponseWriter, field, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]string{
		"code": "invalid_parameter", "field": field, "message": field + ": " + msg,
	}})
}

// query holds a request's query parameters: each may be given once, and
// only the known ones are accepted (like unknown JSON fields in bodies).
type query struct {
	v url.Values
}

// parseQuery checks the query string against the allowed names; it answers
// 400 and returns false when it is refused.
func parseQuery(w http.ResponseWriter, r *http.Request, allowed ...string) (query, bool) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		paramError(w, "query", "malformed query string")
		return query{}, false
	}
	for name, vals := range v {
		known := false
		for _, a := range allowed {
			known = known || a == name
		}
		switch {
		case !known:
			paramError(w, name, "unknown parameter")
			return query{}, false
		case len(vals) > 1:
			paramError(w, name, "given more than once")
			return query{}, false
		}
	}
	return query{v: v}, true
}

func (q query) get(name string) string { return q.v.Get(name) }

// timeParam parses an RFC 3339 parameter ("" is the zero time).
func (q query) timeParam(w http.ResponseWriter, name string) (time.Time, bool) {
	s := q.get(name)
	if s == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		paramError(w, name, "not an RFC 3339 time (like 2006-01-02T15:04:05Z)")
		return time.Time{}, false
	}
	return t, true
}

// window parses since and until (until must be after since).
func (q query) window(w http.ResponseWriter) (since, until time.Time, ok bool) {
	if since, ok = q.timeParam(w, "since"); !ok {
		return
	}
	if until, ok = q.timeParam(w, "until"); !ok {
		return
	}
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		paramError(w, "until", "not after since")
		return since, until, false
	}
	return since, until, true
}

// logFilter parses the query parameters of the list and grouped views.
func logFilter(w http.ResponseWriter, r *http.Request) (logs.Filter, bool) {
	q, ok := parseQuery(w, r, "log_type", "workflow_id", "instance_id", "needs_review", "since", "until", "limit", "cursor")
	if !ok {
		return logs.Filter{}, false
	}
	f := logs.Filter{
		LogType: q.get("log_type"), WorkflowID: q.get("workflow_id"), InstanceID: q.get("instance_id"), Cursor: q.get("cursor"),
	}
	if f.LogType != "" && !logs.ValidType(f.LogType) {
		paramError(w, "log_type", fmt.Sprintf("unknown log type %q", f.LogType))
		return logs.Filter{}, false
	}
	if s := q.get("needs_review"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			paramError(w, "needs_review", "not true or false")
			return logs.Filter{}, false
		}
		f.NeedsReview = &b
	}
	if f.Since, f.Until, ok = q.window(w); !ok {
		return logs.Filter{}, false
	}
	if s := q.get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > logs.MaxLimit {
			paramError(w, "limit", fmt.Sprintf("not a whole number from 1 to %d", logs.MaxLimit))
			return logs.Filter{}, false
		}
		f.Limit = n
	}
	return f, true
}

// logError answers a store error: refused arguments are 400 naming the
// parameter, unknown (or another user's) rows 404, anything else 500.
func (s *Server) logError(w http.ResponseWriter, r *http.Request, err error) {
	var ie *logs.InvalidError
	switch {
	case errors.As(err, &ie):
		paramError(w, ie.Field, ie.Message)
	case errors.Is(err, logs.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no such log entry")
	default:
		s.internalError(w, r, err)
	}
}

func (s *Server) listLogs(w http.ResponseWriter, r *http.Request, u users.User) {
	f, ok := logFilter(w, r)
	if !ok {
		return
	}
	page, err := s.d.Logs.List(r.Context(), u.ID, f)
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) groupedLogs(w http.ResponseWriter, r *http.Request, u users.User) {
	f, ok := logFilter(w, r)
	if !ok {
		return
	}
	page, err := s.d.Logs.Grouped(r.Context(), u.ID, f)
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) logCosts(w http.ResponseWriter, r *http.Request, u users.User) {
	q, ok := parseQuery(w, r, "since", "until")
	if !ok {
		return
	}
	since, until, ok := q.window(w)
	if !ok {
		return
	}
	c, err := s.d.Logs.Costs(r.Context(), u.ID, since, until)
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) logUsage(w http.ResponseWriter, r *http.Request, u users.User) {
	usage, err := s.d.Logs.Usage(r.Context(), u.ID, r.PathValue("instance_id"))
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, usage)
}

func (s *Server) getLog(w http.ResponseWriter, r *http.Request, u users.User) {
	e, err := s.d.Logs.Get(r.Context(), u.ID, r.PathValue("id"))
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// reviewBody is the body of POST /api/v1/logs/{id}/review.
type reviewBody struct {
	NeedsReview *bool  `json:"needs_review"`
	Feedback    string `json:"feedback"`
}

// reviewLog stores the user's verdict on a row. The row is resolved first,
// so that another user's id is a 404 whatever the body says.
func (s *Server) reviewLog(w http.ResponseWriter, r *http.Request, u users.User) {
	id := r.PathValue("id")
	if _, err := s.d.Logs.Get(r.Context(), u.ID, id); err != nil {
		s.logError(w, r, err)
		return
	}
	var body reviewBody
	if !decodeJSON(w, r, &body) {
		return
	}
	if body.NeedsReview == nil {
		paramError(w, "needs_review", "required (true or false)")
		return
	}
	if n := utf8.RuneCountInString(body.Feedback); n > logs.MaxFeedbackLen {
		paramError(w, "feedback", fmt.Sprintf("%d characters, over the %d allowed", n, logs.MaxFeedbackLen))
		return
	}
	e, err := s.d.Logs.Review(r.Context(), u.ID, id, *body.NeedsReview, body.Feedback)
	if err != nil {
		s.logError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}
