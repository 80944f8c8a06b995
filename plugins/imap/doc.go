// Package imap is the first-party "imap" plugin: the mail tools agents use to
// read, search, label, archive and answer a user's mail on any IMAP server
// (Gmail, Dovecot, Fastmail, Exchange ...), with the names and behaviour of
// the original system's IMAP tool server:
//
//   - list_most_recent_inbox_emails, get_messages_from_folder and
//     search_emails list messages as {messageId, from, to, subject, date,
//     snippet}, newest first;
//   - get_thread_for_message_id returns a conversation as thread markdown
//     (mail.ThreadMarkdown);
//   - get_all_labels lists the user's own folders (no INBOX, no special-use
//     folders);
//   - draft_reply composes a reply (multipart/alternative, the HTML part
//     rendered from the markdown body, the user's signature from recent
//     sent mail) and appends it to the Drafts folder;
//   - set_label copies a message into a label's folder, creating it;
//   - remove_from_inbox archives a message (MOVE, or COPY + \Deleted +
//     EXPUNGE where the server has no MOVE);
//   - find_similar_threads searches the user's vector collection through the
//     host for threads like a message's thread.
//
// A messageId is the contextual id of mail.EncodeMessageID: the mailbox name
// in base64url, a colon and the UID ("SU5CT1g:42").
//
// The plugin runs out of process (`inboxd plugin serve imap`) and knows the
// user only from the call: the user id from sdk.UserFrom, the IMAP account
// from the host's settings service (the password is sent because the plugin
// declares sdk.NeedIMAPCredentials). It shares daemon/mail's library code
// with the daemon, never its stores. Logged-in connections are kept for a
// short while per user (a mail.Pool keyed by user id and account), so that an
// agent's burst of tool calls logs in once.
//
// Tool-level failures (a malformed or unknown message id, a missing folder,
// IMAP not configured, a refused login) are answered as error results the
// model can read; failures to reach the server are returned as errors. The
// plugin logs nothing: no password, no message content.
package imap
