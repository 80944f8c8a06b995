package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	netmail "net/mail"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// workflowRoutes registers workflows, instances and tools routes.
func (s *Server) workflowRoutes() {
	s.user("GET /api/v1/workflows", s.listWorkflows)
	s.user("POST /api/v1/workflows", s.createWorkflow)
	s.user("POST /api/v1/workflows/import", s.importWorkflow)
	s.user("GET /api/v1/workflows/{id}", s.getWorkflow)
	s.user("PATCH /api/v1/workflows/{id}", s.patchWorkflow)
	s.user("DELETE /api/v1/workflows/{id}", s.deleteWorkflow)
	s.user("PUT /api/v1/workflows/{id}/status", s.putWorkflowStatus)
	s.user("GET /api/v1/workflows/{id}/export", s.exportWorkflow)

	s.user("POST /api/v1/workflows/{id}/steps", s.addStep)
	s.user("PUT /api/v1/workflows/{id}/steps/order", s.reorderSteps)
	s.user("PATCH /api/v1/workflows/{id}/steps/{step_id}", s.patchStep)
	s.user("DELETE /api/v1/workflows/{id}/steps/{step_id}", s.deleteStep)

	s.user("PUT /api/v1/workflows/{id}/trigger", s.putTrigger)
	s.user("PATCH /api/v1/workflows/{id}/trigger", s.patchTrigger)
	s.user("DELETE /api/v1/workflows/{id}/trigger", s.deleteTrigger)

	s.user("POST /api/v1/workflows/{id}/run", s.runWorkflow)
	s.user("GET /api/v1/workflows/{id}/instances", s.listInstances)

	s.instanceRoutes()
	s.toolRoutes()
}

// workflowError answers err: not found as 404, a validation error as 400
// naming the field, anything else as 500. It reports whether it answered.
func (s *Server) workflowError(w http.ResponseWriter, r *http.Request, err error) bool {
	if err == nil {
		return false
	}
	var ve *workflow.ValidationError
	switch {
	case errors.Is(err, workflow.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no such resource")
	case errors.As(err, &ve):
		writeFieldError(w, "invalid_workflow", ve.Field, ve.Field+": "+ve.Message)
	default:
		s.internalError(w, r, err)
	}
	return true
}

func writeFieldError(w http.ResponseWriter, code, field, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]string{
		"code": code, "field": field, "message": msg,
	}})
}

func invalid(field, format string, a ...any) error {
	return &workflow.ValidationError{Field: field, Message: fmt.Sprintf(format, a...)}
}

// pathWorkflow loads the {id} workflow of u. The lookup comes before any
// body is read so that another user's id is a 404 whatever the body says.
func (s *Server) pathWorkflow(w http.ResponseWriter, r *http.Request, u users.User) (workflow.Workflow, bool) {
	wf, err := s.d.Workflows.GetWorkflow(r.Context(), u.ID, r.PathValue("id"))
	if s.workflowError(w, r, err) {
		return workflow.Workflow{}, false
	}
	return wf, true
}

// readStrict reads the body and decodes it strictly into v; the error, if
// any, is already answered.
func readStrict(w http.ResponseWriter, r *http.Request, v any) bool {
	b, ok := readBody(w, r)
	if !ok {
		return false
	}
	if err := decodeStrict(b, v); err != nil {
		answerInvalid(w, err)
		return false
	}
	return true
}

// answerInvalid answers a request body's ValidationError as 400.
func answerInvalid(w http.ResponseWriter, err error) {
	ve := &workflow.ValidationError{Field: "body", Message: err.Error()}
	errors.As(err, &ve)
	writeFieldError(w, "invalid_request", ve.Field, ve.Field+": "+ve.Message)
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data. Problems come back as a ValidationError naming
// the offending field where JSON says which ("body" otherwise).
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && !atEnd(dec) {
		return invalid("body", "trailing data after the JSON value")
	}
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return invalid(te.Field, "must be %s, not %s", te.Type, te.Value)
	}
	// encoding/json reports unknown fields only in the error text.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if f, uerr := strconv.Unquote(name); uerr == nil {
			return invalid(f, "unknown field")
		}
	}
	return invalid("body", "invalid JSON: %v", err)
}

// jsonFields lists the JSON names of struct type t's fields.
func jsonFields(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "-" && name != "" {
			out[name] = true
		}
	}
	return out
}

// readPatch reads a JSON object body as its top-level members, refusing
// members outside allowed (each named in the 400).
func readPatch(w http.ResponseWriter, r *http.Request, allowed map[string]bool) (map[string]json.RawMessage, bool) {
	b, ok := readBody(w, r)
	if !ok {
		return nil, false
	}
	var patch map[string]json.RawMessage
	if err := json.Unmarshal(b, &patch); err != nil || patch == nil {
		writeFieldError(w, "invalid_request", "body", "body: must be a JSON object")
		return nil, false
	}
	keys := make([]string, 0, len(patch))
	for k := range patch {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !allowed[k] {
			writeFieldError(w, "invalid_request", k, k+": cannot be changed here")
			return nil, false
		}
	}
	return patch, true
}

// merge lays patch's members over cur's JSON form (null removes a member,
// so the field goes back to its zero value) and decodes the result into out.
// Members are replaced whole: a patch of "trigger" is the new trigger.
func merge(cur any, patch map[string]json.RawMessage, out any) error {
	b, err := json.Marshal(cur)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	for k, v := range patch {
		if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	if b, err = json.Marshal(m); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	return decodeStrict(b, out)
}

func (s *Server) listWorkflows(w http.ResponseWriter, r *http.Request, u users.User) {
	list, err := s.d.Workflows.ListWorkflows(r.Context(), u.ID)
	if s.workflowError(w, r, err) {
		return
	}
	if list == nil {
		list = []workflow.Workflow{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list})
}

func (s *Server) createWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	var wf workflow.Workflow
	if !readStrict(w, r, &wf) {
		return
	}
	// The server owns these; a client echoing a fetched workflow back is fine.
	wf.ID, wf.CreatedAt, wf.UpdatedAt = "", time.Time{}, time.Time{}
	created, err := s.d.Workflows.CreateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, err) {
		return
	}
	writeJSON(w, http.StatusCreated, created)
}

func (s *Server) getWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	if wf, ok := s.pathWorkflow(w, r, u); ok {
		writeJSON(w, http.StatusOK, wf)
	}
}

// patchableWorkflow are the members PATCH may change.
func patchableWorkflow() map[string]bool {
	return map[string]bool{"name": true, "description": true, "active": true, "trigger": true, "steps": true}
}

func (s *Server) patchWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	patch, ok := readPatch(w, r, patchableWorkflow())
	if !ok {
		return
	}
	var next workflow.Workflow
	if s.workflowError(w, r, merge(wf, patch, &next)) {
		return
	}
	next.ID, next.CreatedAt, next.UpdatedAt = wf.ID, wf.CreatedAt, wf.UpdatedAt
	s.saveWorkflow(w, r, u, next)
}

// saveWorkflow replaces the workflow and answers it.
func (s *Server) saveWorkflow(w http.ResponseWriter, r *http.Request, u users.User, wf workflow.Workflow) {
	updated, err := s.d.Workflows.UpdateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, err) {
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

func (s *Server) deleteWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	if s.workflowError(w, r, s.d.Workflows.DeleteWorkflow(r.Context(), u.ID, r.PathValue("id"))) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) putWorkflowStatus(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	var req struct {
		Active *bool `json:"active"`
	}
	if !readStrict(w, r, &req) {
		return
	}
	if req.Active == nil {
		writeFieldError(w, "invalid_request", "active", "active: required (true or false)")
		return
	}
	wf.Active = *req.Active
	s.saveWorkflow(w, r, u, wf)
}

// Steps.

type addStepRequest struct {
	workflow.Step
	Position *int `json:"position"` // 0-based index to insert at; default: append
}

func (s *Server) addStep(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	var req addStepRequest
	if !readStrict(w, r, &req) {
		return
	}
	pos := len(wf.Steps)
	if req.Position != nil {
		pos = *req.Position
	}
	if pos < 0 || pos > len(wf.Steps) {
		writeFieldError(w, "invalid_request", "position", fmt.Sprintf("position: must be between 0 and %d", len(wf.Steps)))
		return
	}
	wf.Steps = slices.Insert(slices.Clone(wf.Steps), pos, req.Step)
	updated, err := s.d.Workflows.UpdateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, err) {
		return
	}
	if pos >= len(updated.Steps) { // the store must keep every step; be safe anyway
		s.internalError(w, r, fmt.Errorf("workflow %s: added step missing after update", wf.ID))
		return
	}
	writeJSON(w, http.StatusCreated, updated.Steps[pos])
}

// pathStep finds the {step_id} step in wf.
func pathStep(w http.ResponseWriter, r *http.Request, wf workflow.Workflow) (int, bool) {
	i := slices.IndexFunc(wf.Steps, func(st workflow.Step) bool { return st.ID == r.PathValue("step_id") })
	if i < 0 {
		writeError(w, http.StatusNotFound, "not_found", "no such step")
		return 0, false
	}
	return i, true
}

func (s *Server) patchStep(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	i, ok := pathStep(w, r, wf)
	if !ok {
		return
	}
	patch, ok := readPatch(w, r, jsonFields(reflect.TypeFor[workflow.Step]()))
	if !ok {
		return
	}
	if raw, ok := patch["id"]; ok {
		var id string
		if json.Unmarshal(raw, &id) != nil || id != wf.Steps[i].ID {
			writeFieldError(w, "invalid_request", "id", "id: a step's id cannot be changed")
			return
		}
	}
	var st workflow.Step
	if s.workflowError(w, r, merge(wf.Steps[i], patch, &st)) {
		return
	}
	st.ID = wf.Steps[i].ID
	wf.Steps = slices.Clone(wf.Steps)
	wf.Steps[i] = st
	updated, err := s.d.Workflows.UpdateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, err) {
		return
	}
	j := slices.IndexFunc(updated.Steps, func(x workflow.Step) bool { return x.ID == st.ID })
	if j < 0 {
		s.internalError(w, r, fmt.Errorf("workflow %s: patched step %s missing after update", wf.ID, st.ID))
		return
	}
	writeJSON(w, http.StatusOK, updated.Steps[j])
}

// deleteStep answers the workflow without the step; validation refuses the
// removal of a step that a later step still refers to.
func (s *Server) deleteStep(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	i, ok := pathStep(w, r, wf)
	if !ok {
		return
	}
	name := wf.Steps[i].Name
	wf.Steps = slices.Delete(slices.Clone(wf.Steps), i, i+1)
	updated, err := s.d.Workflows.UpdateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, explain(err, fmt.Sprintf("step %q cannot be removed", name))) {
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

// explain prefixes a ValidationError's message with what was being done:
// its field indexes refer to the steps as they would have been, which
// alone reads oddly.
func explain(err error, what string) error {
	var ve *workflow.ValidationError
	if errors.As(err, &ve) {
		return &workflow.ValidationError{Field: ve.Field, Message: what + ": " + ve.Message}
	}
	return err
}

func (s *Server) reorderSteps(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	var req struct {
		StepIDs []string `json:"step_ids"`
	}
	if !readStrict(w, r, &req) {
		return
	}
	byID := make(map[string]workflow.Step, len(wf.Steps))
	for _, st := range wf.Steps {
		byID[st.ID] = st
	}
	if len(req.StepIDs) != len(wf.Steps) {
		writeFieldError(w, "invalid_request", "step_ids", fmt.Sprintf("step_ids: must list each of the %d step ids once", len(wf.Steps)))
		return
	}
	steps := make([]workflow.Step, 0, len(req.StepIDs))
	for _, id := range req.StepIDs {
		st, ok := byID[id]
		if !ok {
			writeFieldError(w, "invalid_request", "step_ids", fmt.Sprintf("step_ids: %q is not a step of this workflow, or is listed twice", id))
			return
		}
		delete(byID, id)
		steps = append(steps, st)
	}
	wf.Steps = steps
	updated, err := s.d.Workflows.UpdateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, explain(err, "in the new order")) {
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

// Trigger.

func (s *Server) putTrigger(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	var t workflow.Trigger
	if !readStrict(w, r, &t) {
		return
	}
	wf.Trigger = &t
	s.saveWorkflow(w, r, u, wf)
}

// patchTrigger updates some members of the trigger (a workflow without one
// starts from an empty trigger, so "type" is then required).
func (s *Server) patchTrigger(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	patch, ok := readPatch(w, r, jsonFields(reflect.TypeFor[workflow.Trigger]()))
	if !ok {
		return
	}
	var cur, next workflow.Trigger
	if wf.Trigger != nil {
		cur = *wf.Trigger
	}
	if s.workflowError(w, r, merge(cur, patch, &next)) {
		return
	}
	wf.Trigger = &next
	s.saveWorkflow(w, r, u, wf)
}

// deleteTrigger leaves a workflow that runs only manually.
func (s *Server) deleteTrigger(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	wf.Trigger = nil
	s.saveWorkflow(w, r, u, wf)
}

// Manual runs.

type runEmail struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Subject   string `json:"subject"`
	Body      string `json:"body"`
	Date      string `json:"date"`       // default: now
	MessageID string `json:"message_id"` // optional
}

type runRequest struct {
	Input          *string   `json:"input"`
	Email          *runEmail `json:"email"`
	IdempotencyKey string    `json:"idempotency_key"`
}

// runWorkflow queues a manual run; the runner picks it up. Neither input nor
// email runs the workflow on nothing, as a schedule trigger does. A run is
// allowed on an inactive workflow: that is how one tries a workflow out.
func (s *Server) runWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var req runRequest
	if len(bytes.TrimSpace(b)) > 0 {
		if err := decodeStrict(b, &req); err != nil {
			answerInvalid(w, err)
			return
		}
	}
	if req.Input != nil && req.Email != nil {
		writeFieldError(w, "invalid_request", "input", "input: give either input or email, not both")
		return
	}
	if len(req.IdempotencyKey) > workflow.MaxIdempotencyKeyLen {
		writeFieldError(w, "invalid_request", "idempotency_key", fmt.Sprintf("idempotency_key: at most %d bytes", workflow.MaxIdempotencyKeyLen))
		return
	}
	var in workflow.TriggerInput
	switch {
	case req.Input != nil:
		in.Markdown = *req.Input
	case req.Email != nil:
		e := workflow.Email{
			MessageID: req.Email.MessageID, From: req.Email.From, To: req.Email.To,
			Subject: req.Email.Subject, Body: req.Email.Body, Date: req.Email.Date,
		}
		if e.Date == "" {
			e.Date = time.Now().UTC().Format(time.RFC1123Z)
		}
		in = workflow.TriggerInput{Markdown: EmailMarkdown(e), Email: &e}
	}
	inst, created, err := s.d.Workflows.CreateInstance(r.Context(), u.ID, wf.ID, in, req.IdempotencyKey)
	if s.workflowError(w, r, err) {
		return
	}
	code := http.StatusAccepted
	if !created { // an earlier request with this idempotency key made it
		code = http.StatusOK
	}
	writeJSON(w, code, inst)
}

// EmailMarkdown renders one posted email as a one-message thread with
// mail.ThreadMarkdown, so that a manual run reads exactly like a new-email run.
func EmailMarkdown(e workflow.Email) string {
	msg := &mail.Message{
		From: postedAddresses(e.From), To: postedAddresses(e.To),
		Subject: e.Subject, MessageID: strings.Trim(strings.TrimSpace(e.MessageID), "<>"),
		Body: e.Body, BodyCleaned: e.Body,
	}
	if d, err := netmail.ParseDate(e.Date); err == nil {
		msg.Date = d
	}
	return mail.ThreadMarkdown(&mail.Thread{Messages: []*mail.ThreadMessage{{Message: msg}}})
}

// postedAddresses reads a posted address list leniently: what does not parse
// is kept as written.
func postedAddresses(s string) []mail.Address {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	list, err := netmail.ParseAddressList(s)
	if err != nil {
		return []mail.Address{{Email: s}}
	}
	out := make([]mail.Address, len(list))
	for i, a := range list {
		out[i] = mail.Address{Name: a.Name, Email: a.Address}
	}
	return out
}

// Export and import.

func (s *Server) exportWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, ExportWorkflow(wf))
}

// importWorkflow creates a new workflow from a document (the export format
// or the API's workflow shape) with fresh step ids.
func (s *Server) importWorkflow(w http.ResponseWriter, r *http.Request, u users.User) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	wf, err := ImportWorkflow(b, nil)
	if s.workflowError(w, r, err) {
		return
	}
	created, err := s.d.Workflows.CreateWorkflow(r.Context(), u.ID, wf)
	if s.workflowError(w, r, err) {
		return
	}
	writeJSON(w, http.StatusCreated, created)
}

// DocumentVersion is the version of the portable workflow document this
// inboxd writes and reads.
const DocumentVersion = 1

// Document is the portable form of a workflow: what export writes and
// import (and `inboxd workflow apply`) read. Step ids are kept so that
// references between steps (step_to_check, <<step_output.ID>>) still point
// somewhere; an import gives the steps fresh ids and rewrites the references.
type Document struct {
	Version     int               `json:"inboxd_workflow"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Active      *bool             `json:"active,omitempty"` // import only; export leaves it to the importer
	Trigger     *workflow.Trigger `json:"trigger"`
	Steps       []workflow.Step   `json:"steps"`
}

// ExportWorkflow returns wf's portable document.
func ExportWorkflow(wf workflow.Workflow) Document {
	steps := wf.Steps
	if steps == nil {
		steps = []workflow.Step{}
	}
	return Document{Version: DocumentVersion, Name: wf.Name, Description: wf.Description, Trigger: wf.Trigger, Steps: steps}
}

// ImportWorkflow reads a JSON document, either the portable Document or the
// API's workflow shape, into a workflow ready to create, or, when existing is
// set, to replace existing. Steps get fresh ids, except that a step named like
// one of existing's keeps that step's id (so re-applying a file keeps ids
// stable); references to the document's step ids are rewritten to match.
// Active is the document's if it says, else existing's, else false: an
// imported workflow acts on mail only once someone turns it on.
// Malformed documents are a *workflow.ValidationError.
func ImportWorkflow(doc []byte, existing *workflow.Workflow) (workflow.Workflow, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(doc, &members); err != nil || members == nil {
		return workflow.Workflow{}, invalid("body", "must be a JSON object (a workflow document)")
	}
	var wf workflow.Workflow
	var active *bool
	if _, ok := members["inboxd_workflow"]; ok {
		var d Document
		if err := decodeStrict(doc, &d); err != nil {
			return workflow.Workflow{}, err
		}
		if d.Version != DocumentVersion {
			return workflow.Workflow{}, invalid("inboxd_workflow", "unsupported document version %d (this inboxd reads %d)", d.Version, DocumentVersion)
		}
		wf = workflow.Workflow{Name: d.Name, Description: d.Description, Trigger: d.Trigger, Steps: d.Steps}
		active = d.Active
	} else {
		if err := decodeStrict(doc, &wf); err != nil {
			return workflow.Workflow{}, err
		}
		if _, ok := members["active"]; ok {
			a := wf.Active
			active = &a
		}
		wf.CreatedAt, wf.UpdatedAt = time.Time{}, time.Time{}
	}
	wf.ID, wf.Active = "", false
	if existing != nil {
		wf.ID, wf.Active, wf.CreatedAt = existing.ID, existing.Active, existing.CreatedAt
	}
	if active != nil {
		wf.Active = *active
	}
	steps, err := reidentify(wf.Steps, existing)
	if err != nil {
		return workflow.Workflow{}, err
	}
	wf.Steps = steps
	return wf, nil
}

// reidentify gives steps new ids (reusing existing's ids by step name) and
// rewrites references to the old ids. References by name are left alone:
// the store resolves them.
func reidentify(steps []workflow.Step, existing *workflow.Workflow) ([]workflow.Step, error) {
	reuse := map[string]string{} // step name -> existing id (names are unique in a workflow)
	if existing != nil {
		for _, st := range existing.Steps {
			reuse[st.Name] = st.ID
		}
	}
	ids := make(map[string]string, len(steps)) // old id -> new id
	out := slices.Clone(steps)
	for i := range out {
		name := strings.TrimSpace(out[i].Name) // as the store saves it
		id, ok := reuse[name]
		if ok {
			delete(reuse, name)
		} else {
			id = workflow.NewID()
		}
		if old := strings.TrimSpace(out[i].ID); old != "" {
			if _, dup := ids[old]; dup {
				return nil, invalid(fmt.Sprintf("steps[%d].id", i), "duplicate step id %q", old)
			}
			ids[old] = id
		}
		out[i].ID = id
	}
	for i := range out {
		st := &out[i]
		if n, ok := ids[st.StepToCheck]; ok {
			st.StepToCheck = n
		}
		st.SystemPrompt = rewriteStepRefs(st.SystemPrompt, ids)
		args, err := rewriteArguments(st.Arguments, ids)
		if err != nil {
			return nil, invalid(fmt.Sprintf("steps[%d].arguments", i), "%v", err)
		}
		st.Arguments = args
	}
	return out, nil
}

// rewriteStepRefs rewrites <<step_output.OLD>> to <<step_output.NEW>>. A
// reference is what the store's template parser takes for one: no '<', '>'
// or line break before the closing ">>".
func rewriteStepRefs(s string, ids map[string]string) string {
	const open, closing = "<<step_output.", ">>"
	var b strings.Builder
	for {
		i := strings.Index(s, open)
		if i < 0 {
			break
		}
		rest := s[i+len(open):]
		j := strings.Index(rest, closing)
		if j <= 0 || strings.ContainsAny(rest[:j], "<>\r\n") {
			b.WriteString(s[:i+1]) // not a reference here; look again one byte on
			s = s[i+1:]
			continue
		}
		ref := rest[:j]
		if n, ok := ids[ref]; ok {
			ref = n
		}
		b.WriteString(s[:i+len(open)])
		b.WriteString(ref)
		b.WriteString(closing)
		s = rest[j+len(closing):]
	}
	b.WriteString(s)
	return b.String()
}

// rewriteArguments rewrites step references in every string of a tool's
// arguments. Unchanged arguments keep their exact bytes.
func rewriteArguments(args json.RawMessage, ids map[string]string) (json.RawMessage, error) {
	if len(bytes.TrimSpace(args)) == 0 || len(ids) == 0 {
		return args, nil
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber() // keep numbers exactly as written
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	changed := false
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case string:
			n := rewriteStepRefs(x, ids)
			changed = changed || n != x
			return n
		case map[string]any:
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	v = walk(v)
	if !changed {
		return args, nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep << >> readable
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return json.RawMessage(bytes.TrimRight(b.Bytes(), "\n")), nil
}
