package imap

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/inboxd/inboxd/sdk"
)

// Name and Version of the plugin.
const (
	Name    = "imap"
	Version = "1.0.0"
)

// Plugin returns the imap plugin, for `inboxd plugin serve imap`. Its
// connection cache is made on the first call and lives as long as the
// process.
func Plugin() sdk.Plugin {
	p, _ := newPlugin(options{})
	return p
}

// newPlugin builds the plugin on a new server, which tests close.
func newPlugin(opts options) (sdk.Plugin, *server) {
	s := newServer(opts)
	return sdk.Plugin{
		Name:    Name,
		Version: Version,
		Needs:   []sdk.Need{sdk.NeedIMAPCredentials},
		Tools:   tools(s),
	}, s
}

func tools(s *server) []sdk.Tool {
	return []sdk.Tool{
		tool("list_most_recent_inbox_emails",
			"List the most recent emails in the user's INBOX, newest first. Each has messageId (pass it to the other tools), "+
				"from, to, subject, date (RFC 3339) and a snippet of its text.",
			`{"type":"object","properties":{
				"count":{"type":"integer","minimum":1,"maximum":50,"default":10,"description":"How many emails to list (1-50)."}},
			"additionalProperties":false}`,
			s.listRecent, jsonResult[[]emailSummary]),
		tool("get_thread_for_message_id",
			"Get the whole conversation (thread) a message belongs to, as markdown: every message with its From, To, CC, Date, "+
				"Subject and tool message id, and its text without quoted replies, oldest first.",
			messageSchema(""),
			s.getThread, textResult),
		tool("search_emails",
			"Search a folder (INBOX unless folder is given) and list the matching emails, newest first, like list_most_recent_inbox_emails. "+
				`Query syntax: from:alice to:bob cc:carol subject:"quarterly report" body:invoice since:2024-01-02 before:2024-02-01 `+
				`and free words or "exact phrases", matched anywhere in the headers and text. All terms must match; matching is `+
				"by substring and usually case-insensitive; since: is inclusive and before: exclusive (days of the Date header).",
			`{"type":"object","properties":{
				"query":{"type":"string","description":"The search, e.g. from:alice@example.com subject:invoice since:2024-01-02 \"late payment\"."},
				"folder":{"type":"string","description":"The folder to search (default INBOX); get_all_labels lists them."},
				"limit":{"type":"integer","minimum":1,"maximum":50,"default":20,"description":"At most this many results (1-50), the newest."}},
			"required":["query"],"additionalProperties":false}`,
			s.searchEmails, jsonResult[[]emailSummary]),
		tool("get_messages_from_folder",
			"List the most recent emails of a folder (a name from get_all_labels, or INBOX), newest first, "+
				"like list_most_recent_inbox_emails.",
			`{"type":"object","properties":{
				"folder":{"type":"string","description":"The folder name, exactly as get_all_labels lists it."},
				"count":{"type":"integer","minimum":1,"maximum":50,"default":10,"description":"How many emails to list (1-50)."}},
			"required":["folder"],"additionalProperties":false}`,
			s.folderMessages, jsonResult[[]emailSummary]),
		tool("get_all_labels",
			"List the user's own folders (labels), sorted by name: not INBOX and not the special folders (Sent, Drafts, Trash, "+
				"Junk, Archive, All Mail ...).",
			`{"type":"object","properties":{},"additionalProperties":false}`,
			func(ctx context.Context, cl call, _ struct{}) ([]string, error) { return s.allLabels(ctx, cl) },
			jsonResult[[]string]),
		tool("draft_reply",
			"Write a reply to a message and save it as a draft in the user's Drafts folder; it is NOT sent. The subject gets "+
				`"Re:" unless it already is a reply; To is the original sender (its Reply-To when set), Cc keeps the original Cc `+
				"without the user; In-Reply-To and References keep it in the thread. The body is markdown (paragraphs, "+
				"**bold**, *italics*, [links](https://...), - lists), saved as plain text and HTML. The user's signature, when "+
				"one is found in recent sent mail, is appended: do not write one. Refused with an error when the user has "+
				"turned draft creation off (setting draft_creation_enabled). Answers the draft's folder, subject and recipients.",
			`{"type":"object","properties":{
				"messageId":{"type":"string","description":"The messageId of the email to reply to."},
				"body":{"type":"string","description":"The reply text, in markdown, without a signature."}},
			"required":["messageId","body"],"additionalProperties":false}`,
			s.draftReply, jsonResult[draftResult]),
		tool("set_label",
			"Label a message: copy it into the folder named like the label, creating that folder when it does not exist "+
				"(on Gmail this adds the label). The message also stays where it is; labelling twice does nothing.",
			`{"type":"object","properties":{
				"messageId":{"type":"string","description":"The messageId of the email to label."},
				"label":{"type":"string","description":"The label (folder) name, e.g. one from get_all_labels."}},
			"required":["messageId","label"],"additionalProperties":false}`,
			s.setLabel, jsonResult[labelResult]),
		tool("remove_from_inbox",
			"Archive a message: move it out of the INBOX into the Archive folder (All Mail on Gmail). Nothing is deleted.",
			messageSchema(""),
			s.removeFromInbox, jsonResult[archiveResult]),
		tool("find_similar_threads",
			"Find earlier conversations similar to a message's thread, by meaning, in the user's indexed mail (the thread "+
				"itself is left out): up to top_k threads, most similar first, each with threadId, score (higher is more "+
				"similar), subject and the thread as markdown. Use it to see how the user handled similar mail.",
			messageSchema(`,"top_k":{"type":"integer","minimum":1,"maximum":20,"default":5,"description":"How many threads (1-20)."}`),
			s.findSimilar, jsonResult[[]similarThread]),
	}
}

// messageSchema is the schema of {messageId} plus extra properties.
func messageSchema(extra string) string {
	return `{"type":"object","properties":{
		"messageId":{"type":"string","description":"The messageId of the email, as a list or search tool returned it (e.g. \"SU5CT1g:42\")."}` +
		extra + `},"required":["messageId"],"additionalProperties":false}`
}

// tool makes an sdk.Tool of a tool function: the arguments are bound to A,
// the call's user and host are passed on, tool-level errors become error
// results and other errors fail the call.
func tool[A, R any](name, description, schema string, run func(context.Context, call, A) (R, error), encode func(R) (sdk.Result, error)) sdk.Tool {
	return sdk.Tool{
		Name:        name,
		Description: description,
		InputSchema: compactJSON(schema),
		Handler: func(ctx context.Context, c sdk.Call) (sdk.Result, error) {
			var args A
			if err := c.Bind(&args); err != nil {
				return sdk.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "sdk: ")), nil
			}
			u, ok := sdk.UserFrom(ctx)
			if !ok {
				return sdk.Result{}, errNoUser
			}
			r, err := run(ctx, call{user: u.UserID, host: sdkHost{sdk.HostFrom(ctx)}}, args)
			if err != nil {
				if msg, ok := asToolError(err); ok {
					return sdk.Errorf("%s", msg), nil
				}
				return sdk.Result{}, err
			}
			return encode(r)
		},
	}
}

func jsonResult[R any](r R) (sdk.Result, error) { return sdk.JSON(r) }

func textResult(s string) (sdk.Result, error) { return sdk.Text(s), nil }

// compactJSON strips the layout from a schema literal; it panics on a
// schema that is not JSON, which the package's tests catch.
func compactJSON(s string) json.RawMessage {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		panic("imap: bad schema: " + err.Error())
	}
	b, _ := json.Marshal(v)
	return b
}

// sdkHost adapts the SDK's host services to what the tools need.
type sdkHost struct{ h sdk.Host }

func (a sdkHost) settings(ctx context.Context) (accountSettings, error) {
	st, err := a.h.Settings(ctx)
	if err != nil {
		return accountSettings{}, err
	}
	return accountSettings{
		Server:               st.IMAPServer,
		Port:                 st.IMAPPort,
		Security:             st.IMAPSecurity,
		Username:             st.IMAPUsername,
		Password:             st.IMAPPassword,
		DraftCreationEnabled: st.DraftCreationEnabled,
	}, nil
}

func (a sdkHost) vectorSearch(ctx context.Context, query string, limit int, exclude []string) ([]vectorHit, error) {
	hits, err := a.h.VectorSearch(ctx, query, limit, exclude)
	if err != nil {
		return nil, err
	}
	out := make([]vectorHit, 0, len(hits))
	for _, h := range hits {
		out = append(out, vectorHit{ThreadID: h.ThreadID, Score: h.Score, Payload: h.Payload})
	}
	return out, nil
}
