package mail

import (
	"errors"
	"math/rand"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func mbox(name string, attrs ...imap.MailboxAttr) MailboxInfo {
	return MailboxInfo{Name: name, Delim: '/', Attrs: attrs}
}

func TestResolveFolderList(t *testing.T) {
	type want map[Role]string // role -> name; "" means not found
	tests := []struct {
		name string
		list []MailboxInfo
		want want
		how  map[Role]string
	}{
		{"dovecot special-use", []MailboxInfo{
			mbox("INBOX"), mbox("Drafts", imap.MailboxAttrDrafts), mbox("Sent", imap.MailboxAttrSent),
			mbox("Trash", imap.MailboxAttrTrash), mbox("Archive", imap.MailboxAttrArchive),
		}, want{RoleInbox: "INBOX", RoleDrafts: "Drafts", RoleSent: "Sent", RoleTrash: "Trash", RoleArchive: "Archive", RoleAll: "", RoleJunk: ""},
			map[Role]string{RoleSent: MatchSpecialUse}},
		{"gmail special-use beats names", []MailboxInfo{
			mbox("INBOX"), mbox("[Gmail]", imap.MailboxAttrNoSelect, imap.MailboxAttrHasChildren),
			mbox("[Gmail]/All Mail", imap.MailboxAttrAll), mbox("[Gmail]/Drafts", imap.MailboxAttrDrafts),
			mbox("[Gmail]/Sent Mail", imap.MailboxAttrSent), mbox("[Gmail]/Spam", imap.MailboxAttrJunk),
			mbox("[Gmail]/Bin", imap.MailboxAttrTrash), mbox("[Gmail]/Important", imap.MailboxAttrImportant),
			mbox("Sent"), // a user label named Sent must not win over \Sent
		}, want{RoleAll: "[Gmail]/All Mail", RoleDrafts: "[Gmail]/Drafts", RoleSent: "[Gmail]/Sent Mail", RoleJunk: "[Gmail]/Spam", RoleTrash: "[Gmail]/Bin", RoleArchive: ""},
			map[Role]string{RoleSent: MatchSpecialUse}},
		{"gmail without special-use", []MailboxInfo{
			mbox("INBOX"), mbox("[Gmail]", imap.MailboxAttrNoSelect), mbox("[Gmail]/All Mail"), mbox("[Gmail]/Drafts"),
			mbox("[Gmail]/Sent Mail"), mbox("[Gmail]/Spam"), mbox("[Gmail]/Trash"),
		}, want{RoleAll: "[Gmail]/All Mail", RoleDrafts: "[Gmail]/Drafts", RoleSent: "[Gmail]/Sent Mail", RoleJunk: "[Gmail]/Spam", RoleTrash: "[Gmail]/Trash"},
			map[Role]string{RoleSent: MatchKnownName, RoleAll: MatchKnownName}},
		{"google mail (UK, DE)", []MailboxInfo{
			mbox("INBOX"), mbox("[Google Mail]/Alle Nachrichten"), mbox("[Google Mail]/Entwürfe"), mbox("[Google Mail]/Gesendet"), mbox("[Google Mail]/Papierkorb"),
		}, want{RoleAll: "[Google Mail]/Alle Nachrichten", RoleDrafts: "[Google Mail]/Entwürfe", RoleSent: "[Google Mail]/Gesendet", RoleTrash: "[Google Mail]/Papierkorb"}, nil},
		{"outlook", []MailboxInfo{
			mbox("Inbox"), mbox("Drafts"), mbox("Sent Items"), mbox("Deleted Items"), mbox("Junk Email"), mbox("Archive"), mbox("Outbox"),
		}, want{RoleInbox: "Inbox", RoleDrafts: "Drafts", RoleSent: "Sent Items", RoleTrash: "Deleted Items", RoleJunk: "Junk Email", RoleArchive: "Archive"}, nil},
		{"german", []MailboxInfo{
			mbox("INBOX"), mbox("Entwürfe"), mbox("Gesendete Objekte"), mbox("Gelöschte Elemente"), mbox("Junk-E-Mail"), mbox("Archiv"),
		}, want{RoleDrafts: "Entwürfe", RoleSent: "Gesendete Objekte", RoleTrash: "Gelöschte Elemente", RoleJunk: "Junk-E-Mail", RoleArchive: "Archiv"}, nil},
		{"french", []MailboxInfo{
			mbox("INBOX"), mbox("Brouillons"), mbox("Éléments envoyés"), mbox("Éléments supprimés"), mbox("Courrier indésirable"),
		}, want{RoleDrafts: "Brouillons", RoleSent: "Éléments envoyés", RoleTrash: "Éléments supprimés", RoleJunk: "Courrier indésirable"}, nil},
		{"dutch spanish italian swedish polish", []MailboxInfo{
			mbox("INBOX"), mbox("Verzonden items"), mbox("Borradores"), mbox("Cestino"), mbox("Skräppost"),
		}, want{RoleSent: "Verzonden items", RoleDrafts: "Borradores", RoleTrash: "Cestino", RoleJunk: "Skräppost"}, nil},
		{"polish", []MailboxInfo{mbox("INBOX"), mbox("Wysłane"), mbox("Kosz")}, want{RoleSent: "Wysłane", RoleTrash: "Kosz"}, nil},
		{"courier INBOX. prefix", []MailboxInfo{
			{Name: "INBOX", Delim: '.'}, {Name: "INBOX.Sent", Delim: '.'}, {Name: "INBOX.Drafts", Delim: '.'}, {Name: "INBOX.Trash", Delim: '.'},
		}, want{RoleInbox: "INBOX", RoleSent: "INBOX.Sent", RoleDrafts: "INBOX.Drafts", RoleTrash: "INBOX.Trash"},
			map[Role]string{RoleSent: MatchKnownName}},
		{"keyword match on the leaf", []MailboxInfo{
			mbox("INBOX"), mbox("Mail/Sent Messages 2023"), mbox("Old/My Drafts"), mbox("Presentations"), mbox("Unsent"),
		}, want{RoleSent: "Mail/Sent Messages 2023", RoleDrafts: "Old/My Drafts"},
			map[Role]string{RoleSent: MatchKeyword, RoleDrafts: MatchKeyword}},
		{"no false keyword matches", []MailboxInfo{
			mbox("INBOX"), mbox("Presentations"), mbox("Consent forms"), mbox("Cabinet"),
		}, want{RoleSent: "", RoleTrash: ""}, nil},
		{"noselect and nonexistent never fill a role", []MailboxInfo{
			mbox("INBOX"), mbox("Sent", imap.MailboxAttrNoSelect), mbox("Drafts", imap.MailboxAttrNonExistent, imap.MailboxAttrDrafts),
		}, want{RoleSent: "", RoleDrafts: ""}, nil},
		{"several special-use: shallowest", []MailboxInfo{
			mbox("INBOX"), mbox("Old/Sent", imap.MailboxAttrSent), mbox("Sent", imap.MailboxAttrSent),
		}, want{RoleSent: "Sent"}, nil},
		{"attrs case-insensitive", []MailboxInfo{mbox("INBOX"), mbox("Outgoing", "\\SENT")}, want{RoleSent: "Outgoing"}, nil},
		{"known names case-insensitive", []MailboxInfo{mbox("inbox"), mbox("SENT ITEMS")}, want{RoleInbox: "inbox", RoleSent: "SENT ITEMS"}, nil},
		{"empty list", nil, want{RoleInbox: "INBOX", RoleSent: ""}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(f Folders) {
				t.Helper()
				for role, name := range tt.want {
					got, err := f.Name(role)
					if name == "" {
						if err == nil {
							t.Errorf("%s = %q, want none", role, got)
						}
						continue
					}
					if err != nil || got != name {
						t.Errorf("%s = %q, %v, want %q", role, got, err, name)
					}
				}
				for role, how := range tt.how {
					if got := f.How(role); got != how {
						t.Errorf("How(%s) = %q, want %q", role, got, how)
					}
				}
			}
			check(ResolveFolderList(tt.list))
			r := rand.New(rand.NewSource(2))
			for i := 0; i < 5; i++ {
				l := append([]MailboxInfo(nil), tt.list...)
				r.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
				check(ResolveFolderList(l))
			}
		})
	}
}

func TestFolderError(t *testing.T) {
	f := ResolveFolderList([]MailboxInfo{mbox("INBOX")})
	_, err := f.Name(RoleDrafts)
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, ErrNoFolder) {
		t.Errorf("%v is not ErrNoFolder", err)
	}
	var fe *FolderError
	if !errors.As(err, &fe) || fe.Role != RoleDrafts {
		t.Errorf("%v is not a *FolderError for drafts", err)
	}
	msg := err.Error()
	for _, want := range []string{`mail: no Drafts folder found (looked for \Drafts, `, `"Drafts"`, `"[Gmail]/Drafts"`, `names with "draft"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	for _, role := range Roles() {
		if role == RoleInbox {
			continue
		}
		_, err := f.Name(role)
		if err == nil || !strings.Contains(err.Error(), "folder found (looked for ") {
			t.Errorf("%s: %v", role, err)
		}
	}
	if f.Has(RoleSent) || !f.Has(RoleInbox) {
		t.Error("Has is wrong")
	}
}
