package jobs

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
)

// Bounds of the texts put into prompts, in runes.
const (
	promptMessageRunes = 1500
	promptExcerptRunes = 600
	maxProfileRunes    = 4000
	maxLabelRunes      = 500
)

// replyPair is an email the user received and the user's reply to it.
type replyPair struct {
	theirs, reply string
	generic       string // a generic assistant's reply, for contrast
}

// runTone is the tone-of-voice job: for every language with at least
// ToneMinThreads threads the user replied to, a diverse sample of them,
// (their message, the user's reply) pairs contrasted with a generic reply,
// and an LLM-written profile; stored as {language: profile text}.
func (m *Manager) runTone(ctx context.Context, user userid.ID) error {
	st, err := m.cfg.Settings.Get(ctx, user)
	if err != nil {
		return fmt.Errorf("jobs: read settings: %w", err)
	}
	if st.LLMModel == "" {
		return fmt.Errorf("%w: llm_model is not set", ErrNotConfigured)
	}
	dist, err := m.cfg.Vectors.FieldDistribution(ctx, user, "language", 0)
	if err != nil {
		return fmt.Errorf("jobs: language distribution: %w", err)
	}
	var langs []string
	for lang, n := range dist {
		if lang != LanguageUnknown && lang != "" && n >= m.cfg.ToneMinThreads {
			langs = append(langs, lang)
		}
	}
	sort.Slice(langs, func(i, j int) bool {
		if dist[langs[i]] != dist[langs[j]] {
			return dist[langs[i]] > dist[langs[j]]
		}
		return langs[i] < langs[j]
	})
	profile := map[string]string{}
	for _, lang := range langs {
		if err := m.interrupted(ctx, user, ToneOfVoice); err != nil {
			return err
		}
		hits, err := m.cfg.Vectors.DiverseSet(ctx, user, vectors.Filter{Must: map[string]any{
			"contains_user_reply": true, "language": lang,
		}}, m.cfg.ToneSamples)
		if err != nil {
			return fmt.Errorf("jobs: sample threads: %w", err)
		}
		if len(hits) < m.cfg.ToneMinThreads {
			continue
		}
		pairs := replyPairs(hits, m.cfg.TonePairs)
		if len(pairs) == 0 {
			continue
		}
		text, err := m.toneProfile(ctx, st, lang, pairs)
		if err != nil {
			return err
		}
		profile[lang] = text
	}
	m.log.Info("jobs: tone of voice analysed", "user_id", user, "languages", len(profile))
	return writeJSON(ctx, m.cfg.KV, user.Key(keyToneProfile), profile)
}

// replyPairs takes, from each sampled thread, the first message the user
// answered and the answer, at most max pairs.
func replyPairs(hits []vectors.Hit, max int) []replyPair {
	var out []replyPair
	for _, h := range hits {
		if len(out) >= max {
			break
		}
		list, _ := h.Payload["messages"].([]any)
		var prev map[string]any
		for _, x := range list {
			msg, _ := x.(map[string]any)
			if msg == nil {
				continue
			}
			if prev != nil && msg["type"] == "sent" && prev["type"] == "received" {
				theirs, _ := prev["body_cleaned"].(string)
				reply, _ := msg["body_cleaned"].(string)
				if strings.TrimSpace(theirs) != "" && strings.TrimSpace(reply) != "" {
					out = append(out, replyPair{theirs: clip(theirs, promptMessageRunes), reply: clip(reply, promptMessageRunes)})
					break
				}
			}
			prev = msg
		}
	}
	return out
}

// toneProfile asks the LLM for a generic reply to each received message,
// then for the profile that tells the user's replies from the generic ones.
func (m *Manager) toneProfile(ctx context.Context, st settings.Settings, lang string, pairs []replyPair) (string, error) {
	name := languageName(lang)
	for i := range pairs {
		generic, err := m.chat(ctx, st, []llm.Message{
			{Role: llm.RoleSystem, Content: "You are an email assistant. Write a short, polite reply to the email below, in " + name + ". Answer with the text of the reply only."},
			{Role: llm.RoleUser, Content: pairs[i].theirs},
		}, 400)
		if err != nil {
			return "", err
		}
		pairs[i].generic = clip(generic, promptMessageRunes)
	}
	var b strings.Builder
	for i, p := range pairs {
		fmt.Fprintf(&b, "## Example %d\n\n### Email received\n%s\n\n### Generic reply\n%s\n\n### The person's actual reply\n%s\n\n", i+1, p.theirs, p.generic, p.reply)
	}
	text, err := m.chat(ctx, st, []llm.Message{
		{Role: llm.RoleSystem, Content: "You study how one person writes emails in " + name + ". Each example shows an email they received, " +
			"a generic reply an assistant wrote, and the reply the person actually wrote. Describe the person's tone of voice in " + name +
			" so that an assistant can draft replies that sound like them: formality, greetings and sign-offs, length and structure, " +
			"directness, warmth, recurring phrases, punctuation. Contrast it with the generic replies. Answer with the profile as plain text " +
			"of at most 250 words, without a preamble."},
		{Role: llm.RoleUser, Content: b.String()},
	}, 800)
	if err != nil {
		return "", err
	}
	return clip(text, maxProfileRunes), nil
}

// chat sends one completion to the user's LLM endpoint and returns the
// answer's text.
func (m *Manager) chat(ctx context.Context, st settings.Settings, msgs []llm.Message, maxTokens int) (string, error) {
	resp, err := m.cfg.LLM.Chat(ctx, llm.Request{
		Endpoint:  llm.Endpoint{BaseURL: st.LLMBaseURL, APIKey: st.LLMAPIKey},
		Model:     st.LLMModel,
		Messages:  msgs,
		MaxTokens: maxTokens,
	})
	if err != nil {
		return "", fmt.Errorf("jobs: llm: %w", err)
	}
	text := strings.TrimSpace(resp.Message.Content)
	if text == "" {
		return "", fmt.Errorf("jobs: llm: empty answer")
	}
	return text, nil
}

// clip cuts s to at most n runes, marking the cut.
func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n { // bytes >= runes
		return s
	}
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return strings.TrimSpace(string(r[:n])) + " [...]"
}
