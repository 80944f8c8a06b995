package mail

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Role is what a folder is for, independent of its name on a given server.
type Role string

// Folder roles. Every role but RoleInbox is found through RFC 6154
// SPECIAL-USE attributes first, then known names, then a keyword match.
const (
	RoleInbox   Role = "inbox"
	RoleSent    Role = "sent"
	RoleDrafts  Role = "drafts"
	RoleTrash   Role = "trash"
	RoleArchive Role = "archive"
	RoleAll     Role = "all"
	RoleJunk    Role = "junk"
)

// Roles lists every role, in a stable order.
func Roles() []Role {
	return []Role{RoleInbox, RoleSent, RoleDrafts, RoleTrash, RoleArchive, RoleAll, RoleJunk}
}

// ErrNoFolder matches (errors.Is) the *FolderError Folders.Name returns for
// a role that no folder of the account fills.
var ErrNoFolder = errors.New("mail: no folder for role")

// FolderError says that no folder fills a role, and what was looked for.
type FolderError struct {
	Role Role
	msg  string
}

func (e *FolderError) Error() string { return e.msg }

// Is makes errors.Is(err, ErrNoFolder) true.
func (e *FolderError) Is(target error) bool { return target == ErrNoFolder }

// MailboxInfo is one LIST entry, as the pure resolver sees it.
type MailboxInfo struct {
	Name  string
	Delim rune // hierarchy delimiter; 0 when the server has none (flat)
	Attrs []imap.MailboxAttr
}

// How a folder was found, from the most to the least reliable.
const (
	MatchSpecialUse = "special-use" // an RFC 6154 attribute
	MatchKnownName  = "known-name"  // a name from the table of well-known names
	MatchKeyword    = "keyword"     // a role keyword at a word start of the folder's leaf name
)

// Folders maps roles to the account's folder names.
type Folders struct {
	names map[Role]string
	how   map[Role]string
}

// Name returns the folder that fills role, or a *FolderError naming the
// role and what was looked for (errors.Is ErrNoFolder), e.g.
// `mail: no Drafts folder found (looked for \Drafts, known names such as
// "Drafts", "[Gmail]/Drafts", "Entwürfe", and names with "draft")`.
func (f Folders) Name(role Role) (string, error) {
	if n, ok := f.names[role]; ok {
		return n, nil
	}
	return "", noFolderError(role)
}

// Has reports whether a folder fills role.
func (f Folders) Has(role Role) bool {
	_, ok := f.names[role]
	return ok
}

// How reports how the folder for role was found (MatchSpecialUse,
// MatchKnownName or MatchKeyword), or "" when none was.
func (f Folders) How(role Role) string { return f.how[role] }

// ResolveFolders lists the account's mailboxes (LIST "" "*") and resolves
// every role with ResolveFolderList. Only a failed LIST is an error; a role
// without a folder is reported by Folders.Name. If ctx ends before the
// server answers, the connection is closed and the caller must discard it.
func ResolveFolders(ctx context.Context, c *imapclient.Client) (Folders, error) {
	var list []*imap.ListData
	err := withContext(ctx, c, func() error {
		var err error
		list, err = c.List("", "*", nil).Collect()
		return err
	})
	if err != nil {
		return Folders{}, fmt.Errorf("mail: list folders: %w", err)
	}
	infos := make([]MailboxInfo, 0, len(list))
	for _, l := range list {
		infos = append(infos, MailboxInfo{Name: l.Mailbox, Delim: l.Delim, Attrs: l.Attrs})
	}
	return ResolveFolderList(infos), nil
}

// ResolveFolderList resolves every role from a mailbox list:
//
//  1. a mailbox with the role's RFC 6154 SPECIAL-USE attribute (\Sent,
//     \Drafts, \Trash, \Archive, \All, \Junk);
//  2. else a well-known name (Gmail's "[Gmail]/Sent Mail", Outlook's
//     "Sent Items", localised names such as "Gesendet" or "Éléments envoyés"),
//     compared case-insensitively, with or without an "INBOX." / "INBOX/"
//     prefix; earlier names in the table win;
//  3. else a role keyword ("sent", "draft", "papierkorb", ...) at the start
//     of a word of the mailbox's leaf name, case-insensitively, preferring
//     shallow, then short names.
//
// INBOX is always "INBOX" (RFC 3501 makes it exist for every account) unless
// the list spells it differently. Mailboxes marked \Noselect or
// \NonExistent never fill a role. The result is deterministic for a given
// list, whatever its order.
func ResolveFolderList(mailboxes []MailboxInfo) Folders {
	f := Folders{names: map[Role]string{}, how: map[Role]string{}}
	usable := make([]MailboxInfo, 0, len(mailboxes))
	for _, m := range mailboxes {
		if m.Name == "" || hasAttr(m.Attrs, imap.MailboxAttrNoSelect) || hasAttr(m.Attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		usable = append(usable, m)
	}
	// A stable order makes every "first match" below independent of the
	// server's listing order.
	sort.SliceStable(usable, func(i, j int) bool { return usable[i].Name < usable[j].Name })

	f.names[RoleInbox] = "INBOX"
	f.how[RoleInbox] = MatchKnownName
	for _, m := range usable {
		if strings.EqualFold(m.Name, "INBOX") {
			f.names[RoleInbox] = m.Name
			break
		}
	}

	for _, role := range Roles() {
		if role == RoleInbox {
			continue
		}
		if name, ok := bySpecialUse(usable, role); ok {
			f.names[role], f.how[role] = name, MatchSpecialUse
		} else if name, ok := byKnownName(usable, role); ok {
			f.names[role], f.how[role] = name, MatchKnownName
		} else if name, ok := byKeyword(usable, role); ok {
			f.names[role], f.how[role] = name, MatchKeyword
		}
	}
	return f
}

func hasAttr(attrs []imap.MailboxAttr, want imap.MailboxAttr) bool {
	for _, a := range attrs {
		if strings.EqualFold(string(a), string(want)) {
			return true
		}
	}
	return false
}

// specialUseAttr is the RFC 6154 attribute of a role.
func specialUseAttr(role Role) imap.MailboxAttr {
	switch role {
	case RoleSent:
		return imap.MailboxAttrSent
	case RoleDrafts:
		return imap.MailboxAttrDrafts
	case RoleTrash:
		return imap.MailboxAttrTrash
	case RoleArchive:
		return imap.MailboxAttrArchive
	case RoleAll:
		return imap.MailboxAttrAll
	case RoleJunk:
		return imap.MailboxAttrJunk
	}
	return ""
}

func bySpecialUse(mailboxes []MailboxInfo, role Role) (string, bool) {
	attr := specialUseAttr(role)
	if attr == "" {
		return "", false
	}
	var found []string
	for _, m := range mailboxes {
		if hasAttr(m.Attrs, attr) {
			found = append(found, m.Name)
		}
	}
	if len(found) == 0 {
		return "", false
	}
	return best(found), true
}

// best picks among several candidates: the shallowest, then shortest, then
// lexically first name.
func best(names []string) string {
	sort.Slice(names, func(i, j int) bool {
		di, dj := depth(names[i]), depth(names[j])
		if di != dj {
			return di < dj
		}
		if len(names[i]) != len(names[j]) {
			return len(names[i]) < len(names[j])
		}
		return names[i] < names[j]
	})
	return names[0]
}

func depth(name string) int { return strings.Count(name, "/") + strings.Count(name, ".") }

// knownNames lists well-known folder names per role, most common first.
func knownNames(role Role) []string {
	switch role {
	case RoleSent:
		return []string{
			"Sent", "Sent Items", "Sent Mail", "Sent Messages",
			"[Gmail]/Sent Mail", "[Google Mail]/Sent Mail",
			"[Gmail]/Gesendet", "[Google Mail]/Gesendet", "[Gmail]/Messages envoyés", "[Gmail]/Enviados",
			"[Gmail]/Posta inviata", "[Gmail]/Verzonden berichten", "[Gmail]/Skickat", "[Gmail]/Wysłane",
			"Gesendet", "Gesendete Objekte", "Gesendete Elemente", "Gesendete Nachrichten",
			"Envoyés", "Éléments envoyés", "Messages envoyés",
			"Verzonden", "Verzonden items", "Verzonden berichten",
			"Enviados", "Elementos enviados", "Itens enviados", "Mensagens enviadas",
			"Posta inviata", "Inviati", "Elementi inviati",
			"Skickat", "Skickade objekt", "Sendt", "Sendte elementer", "Sendte", "Lähetetyt",
			"Wysłane", "Elementy wysłane", "Odeslané", "Отправленные",
		}
	case RoleDrafts:
		return []string{
			"Drafts", "Draft",
			"[Gmail]/Drafts", "[Google Mail]/Drafts", "[Gmail]/Entwürfe", "[Google Mail]/Entwürfe",
			"[Gmail]/Brouillons", "[Gmail]/Borradores", "[Gmail]/Bozze", "[Gmail]/Concepten",
			"[Gmail]/Utkast", "[Gmail]/Wersje robocze",
			"Entwürfe", "Brouillons", "Borradores", "Rascunhos", "Bozze",
			"Concepten", "Concepts", "Utkast", "Kladder", "Luonnokset", "Wersje robocze", "Koncepty", "Черновики",
		}
	case RoleTrash:
		return []string{
			"Trash", "Deleted Items", "Deleted Messages", "Deleted",
			"[Gmail]/Trash", "[Google Mail]/Trash", "[Gmail]/Bin", "[Google Mail]/Bin",
			"[Gmail]/Papierkorb", "[Google Mail]/Papierkorb", "[Gmail]/Corbeille", "[Gmail]/Papelera",
			"[Gmail]/Cestino", "[Gmail]/Prullenbak", "[Gmail]/Papperskorgen", "[Gmail]/Kosz",
			"Papierkorb", "Gelöschte Elemente", "Gelöschte Objekte",
			"Corbeille", "Éléments supprimés", "Papelera", "Elementos eliminados", "Lixeira", "Itens excluídos",
			"Cestino", "Posta eliminata", "Elementi eliminati", "Prullenbak", "Verwijderde items",
			"Papperskorgen", "Borttagna objekt", "Slettede elementer", "Kosz", "Elementy usunięte", "Корзина",
		}
	case RoleArchive:
		return []string{
			"Archive", "Archives", "Archived",
			"Archiv", "Archivo", "Archivio", "Archief", "Arkiv", "Archiwum", "Arquivo",
		}
	case RoleAll:
		return []string{
			"[Gmail]/All Mail", "[Google Mail]/All Mail", "All Mail", "All Messages",
			"[Gmail]/Alle Nachrichten", "[Google Mail]/Alle Nachrichten", "[Gmail]/Tous les messages",
			"[Gmail]/Todos", "[Gmail]/Tutti i messaggi", "[Gmail]/Alle berichten", "[Gmail]/Alla mail",
			"[Gmail]/Wszystkie",
		}
	case RoleJunk:
		return []string{
			"Junk", "Spam", "Junk Email", "Junk E-mail", "Junk Mail", "Bulk Mail",
			"[Gmail]/Spam", "[Google Mail]/Spam",
			"Junk-E-Mail", "Courrier indésirable", "Indésirables", "Correo no deseado",
			"Lixo eletrônico", "Posta indesiderata", "Ongewenste e-mail", "Skräppost", "Søppelpost", "Спам",
		}
	}
	return nil
}

// roleKeywords are matched at the start of a word of a mailbox's leaf name.
func roleKeywords(role Role) []string {
	switch role {
	case RoleSent:
		return []string{"sent", "gesendet", "envoy", "enviad", "inviat", "verzonden", "skickat", "sendt", "wysłan", "odeslan", "отправл"}
	case RoleDrafts:
		return []string{"draft", "entwurf", "entwürf", "brouillon", "borrador", "rascunho", "bozz", "concept", "utkast", "kladd", "wersje robocze", "черновик"}
	case RoleTrash:
		return []string{"trash", "deleted", "papierkorb", "gelöscht", "corbeille", "supprim", "papelera", "eliminad", "lixeira", "cestino", "eliminat", "prullenbak", "verwijderd", "papperskorg", "kosz", "usunięt", "корзин"}
	case RoleArchive:
		return []string{"archiv", "archief", "arkiv", "archiwum", "arquiv"}
	case RoleAll:
		return []string{"all mail", "all messages", "alle nachrichten", "tous les messages", "tutti i messaggi"}
	case RoleJunk:
		return []string{"junk", "spam", "bulk", "indésirable", "no deseado", "indesiderat", "ongewenst", "skräp"}
	}
	return nil
}

// withoutInboxPrefix strips a leading "INBOX" + delimiter (Courier, Cyrus
// and some hosted servers put every folder below INBOX).
func withoutInboxPrefix(m MailboxInfo) string {
	if len(m.Name) > 6 && strings.EqualFold(m.Name[:5], "INBOX") {
		d := rune(m.Name[5])
		if (m.Delim != 0 && d == m.Delim) || (m.Delim == 0 && (d == '.' || d == '/')) {
			return m.Name[6:]
		}
	}
	return m.Name
}

func byKnownName(mailboxes []MailboxInfo, role Role) (string, bool) {
	for _, want := range knownNames(role) {
		var found []string
		for _, m := range mailboxes {
			if strings.EqualFold(m.Name, want) || strings.EqualFold(withoutInboxPrefix(m), want) {
				found = append(found, m.Name)
			}
		}
		if len(found) > 0 {
			return best(found), true
		}
	}
	return "", false
}

// leafName is the last hierarchy level of a mailbox name.
func leafName(m MailboxInfo) string {
	name := withoutInboxPrefix(m)
	if m.Delim != 0 {
		if i := strings.LastIndex(name, string(m.Delim)); i >= 0 {
			return name[i+len(string(m.Delim)):]
		}
	}
	return name
}

func byKeyword(mailboxes []MailboxInfo, role Role) (string, bool) {
	var found []string
	for _, m := range mailboxes {
		if strings.EqualFold(m.Name, "INBOX") {
			continue
		}
		leaf := strings.ToLower(leafName(m))
		for _, kw := range roleKeywords(role) {
			if containsAtWordStart(leaf, kw) {
				found = append(found, m.Name)
				break
			}
		}
	}
	if len(found) == 0 {
		return "", false
	}
	return best(found), true
}

// containsAtWordStart reports whether kw occurs in s at the start of s or
// right after a character that is not a letter, so that "sent" matches
// "Sent Messages" and "Mail/Sent" but not "Presentations".
func containsAtWordStart(s, kw string) bool {
	for i := 0; i+len(kw) <= len(s); {
		j := strings.Index(s[i:], kw)
		if j < 0 {
			return false
		}
		at := i + j
		if at == 0 {
			return true
		}
		if prev, _ := utf8.DecodeLastRuneInString(s[:at]); !unicode.IsLetter(prev) {
			return true
		}
		i = at + 1
	}
	return false
}

// roleTitle is a role's name in messages.
func roleTitle(role Role) string {
	switch role {
	case RoleInbox:
		return "INBOX"
	case RoleSent:
		return "Sent"
	case RoleDrafts:
		return "Drafts"
	case RoleTrash:
		return "Trash"
	case RoleArchive:
		return "Archive"
	case RoleAll:
		return "All Mail"
	case RoleJunk:
		return "Junk"
	}
	return string(role)
}

func noFolderError(role Role) error {
	var parts []string
	if a := specialUseAttr(role); a != "" {
		parts = append(parts, string(a))
	}
	if names := knownNames(role); len(names) > 0 {
		n := min(len(names), 3)
		// The first plain, Gmail and localised names make the best examples.
		examples := []string{names[0]}
		for _, nm := range names[1:] {
			if len(examples) == n {
				break
			}
			if strings.HasPrefix(nm, "[Gmail]/") && !strings.HasPrefix(examples[len(examples)-1], "[Gmail]/") {
				examples = append(examples, nm)
			}
		}
		for _, nm := range names[len(names)/2:] {
			if len(examples) == n {
				break
			}
			if !strings.HasPrefix(nm, "[") {
				examples = append(examples, nm)
			}
		}
		q := make([]string, len(examples))
		for i, e := range examples {
			q[i] = fmt.Sprintf("%q", e)
		}
		parts = append(parts, "known names such as "+strings.Join(q, ", "))
	}
	if kws := roleKeywords(role); len(kws) > 0 {
		parts = append(parts, fmt.Sprintf("and names with %q", kws[0]))
	}
	return &FolderError{Role: role, msg: fmt.Sprintf("mail: no %s folder found (looked for %s)", roleTitle(role), strings.Join(parts, ", "))}
}
