package mail

import "testing"

func TestStripQuoted(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no quote", "Hello\n\nBye", "Hello\n\nBye"},
		{"gmail top post", "Sounds good.\n\nOn Mon, Jan 1, 2024 at 9:15 PM Alice <alice@example.com> wrote:\n> Lunch?\n>\n> A", "Sounds good."},
		{"gmail wrapped attribution", "Yes.\n\nOn Mon, Jan 1, 2024 at 9:15 PM Alice Example <alice@example.com>\nwrote:\n\n> Lunch?", "Yes."},
		{"attribution over three lines", "Yes.\n\nOn Mon, Jan 1, 2024 at 9:15 PM\nAlice Example\n<alice@example.com> wrote:\n> Lunch?", "Yes."},
		{"german", "Danke!\n\nAm 02.01.2024 um 10:00 schrieb Alice <alice@example.com>:\n> Frage?", "Danke!"},
		{"german gmail", "Gern.\n\nAm Mo., 1. Jan. 2024 um 10:00 Uhr schrieb Max Mustermann <\nmax@example.de>:\n\n> Hallo", "Gern."},
		{"french", "Merci.\n\nLe lun. 1 janv. 2024 à 10:00, Alice <alice@example.com> a écrit :\n> Question ?", "Merci."},
		{"spanish", "Gracias.\n\nEl lun, 1 ene 2024 a las 10:00, Alice (<alice@example.com>) escribió:\n> ¿Pregunta?", "Gracias."},
		{"italian", "Grazie.\n\nIl giorno lun 1 gen 2024 alle ore 10:00 Alice <alice@example.com> ha scritto:\n> Domanda?", "Grazie."},
		{"dutch", "Bedankt.\n\nOp ma 1 jan. 2024 om 10:00 schreef Alice <alice@example.com>:\n> Vraag?", "Bedankt."},
		{"bottom post keeps reply", "On Mon, Jan 1, 2024 at 9:15 PM Alice <alice@example.com> wrote:\n> Lunch at noon?\n\nYes, noon works.", "Yes, noon works."},
		{"interleaved", "> First question?\nFirst answer.\n> Second question?\nSecond answer.", "First answer.\nSecond answer."},
		{"bare wrote before quote", "Agreed.\n\nAlice Example <alice@example.com> wrote:\n> Proposal", "Agreed."},
		{"prose wrote: is kept", "I wrote: the plan is fine.\nMore text.", "I wrote: the plan is fine.\nMore text."},
		{"prose on ... wrote: undated is kept", "On Monday I wrote:\nthe list below\n- a", "On Monday I wrote:\nthe list below\n- a"},
		{"unquoted gmail html quote", "Reply.\n\nOn Mon, Jan 1, 2024 at 9:15 PM Alice wrote:\n\nOriginal unquoted text", "Reply."},
		{"original message", "Looks right.\n\n-----Original Message-----\nFrom: Alice\nSent: Tuesday\nTo: Bob\nSubject: Numbers\n\nCheck?", "Looks right."},
		{"german original message", "Passt.\n\n-----Ursprüngliche Nachricht-----\nVon: Alice\nGesendet: Dienstag\nAn: Bob\nBetreff: Zahlen", "Passt."},
		{"thunderbird original", "OK.\n\n-------- Original Message --------\nSubject: x", "OK."},
		{"outlook block", "Done.\n\nFrom: Alice <alice@example.com>\nSent: Monday, January 8, 2024 1:00 PM\nTo: Bob <bob@example.com>\nSubject: Task\n\nPlease do it.", "Done."},
		{"outlook block with separator", "Done.\n\n________________________________\nFrom: Alice <alice@example.com>\nSent: Monday\nTo: Bob\nSubject: Task\n\nPlease.", "Done."},
		{"outlook bold labels", "Done.\n\n*From:* Alice\n*Sent:* Monday\n*To:* Bob\n*Subject:* Task\n\nPlease.", "Done."},
		{"outlook german", "Erledigt.\n\nVon: Alice <alice@example.com>\nGesendet: Montag, 8. Januar 2024 13:00\nAn: Bob\nBetreff: Aufgabe", "Erledigt."},
		{"outlook french", "Fait.\n\nDe : Alice\nEnvoyé : lundi 8 janvier 2024 13:00\nÀ : Bob\nObjet : Tâche", "Fait."},
		{"from line alone is kept", "From: the team\nWelcome aboard.", "From: the team\nWelcome aboard."},
		{"forward kept", "FYI\n\n---------- Forwarded message ---------\nFrom: Alice <alice@example.com>\nDate: Mon, Jan 1, 2024\nSubject: Plan\nTo: Bob\n\nThe plan.", "FYI\n\n---------- Forwarded message ---------\nFrom: Alice <alice@example.com>\nDate: Mon, Jan 1, 2024\nSubject: Plan\nTo: Bob\n\nThe plan."},
		{"apple forward kept", "See below.\n\nBegin forwarded message:\n\nFrom: Alice\nSubject: Plan\nDate: 1 Jan 2024\nTo: Bob\n\nThe plan.", "See below.\n\nBegin forwarded message:\n\nFrom: Alice\nSubject: Plan\nDate: 1 Jan 2024\nTo: Bob\n\nThe plan."},
		{"blank lines collapsed", "a\n\n\n\nb\n\n", "a\n\nb"},
		{"crlf", "Hi\r\n\r\nOn Mon, Jan 1, 2024 Alice wrote:\r\n> x\r\n", "Hi"},
		{"all quoted", "> only\n> quote", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StripQuoted(tt.in); got != tt.want {
				t.Errorf("StripQuoted(%q)\n got: %q\nwant: %q", tt.in, got, tt.want)
			}
		})
	}
}
