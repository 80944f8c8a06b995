package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
)

// UserKeys is the embedding providers a user has an API key for: the
// user's embedding_api_key counts for the provider of the user's chosen
// model; with no model chosen yet, for Voyage when the key looks like one
// ("pa-..."), else for the catalog default's provider. A user without a key
// has none (the offline model needs none).
func UserKeys(c *embed.Catalog, st settings.Settings) embed.ProviderKeys {
	key := strings.TrimSpace(st.EmbeddingAPIKey)
	if key == "" || c == nil {
		return nil
	}
	if m, ok := c.Lookup(st.EmbeddingModel); ok {
		return embed.KeysFor(m.Provider)
	}
	if strings.HasPrefix(key, "pa-") {
		return embed.KeysFor(embed.ProviderVoyage)
	}
	return embed.KeysFor(c.Default().Provider)
}

// ModelFor is the embedding model the user's vectors are made with: the
// user's embedding_model, else the catalog's best available for the user's
// keys. chosen is false when the user has none set (the caller may save
// the choice).
func ModelFor(c *embed.Catalog, st settings.Settings) (m embed.Model, chosen bool, err error) {
	if st.EmbeddingModel != "" {
		m, ok := c.Lookup(st.EmbeddingModel)
		if !ok {
			return embed.Model{}, true, fmt.Errorf("%w: embedding_model %q is not in the catalog", ErrNotConfigured, st.EmbeddingModel)
		}
		return m, true, nil
	}
	return c.BestAvailable(UserKeys(c, st)), false, nil
}

// userModel resolves the user's model and, when the user had none, saves
// the choice into the user's settings (as the original did on first use).
func (m *Manager) userModel(ctx context.Context, user userid.ID, st settings.Settings) (embed.Model, error) {
	model, chosen, err := ModelFor(m.cfg.Catalog, st)
	if err != nil {
		return embed.Model{}, err
	}
	if !chosen {
		patch := settings.Patch{"embedding_model": json.RawMessage(strconv.Quote(model.Key))}
		if err := m.cfg.Settings.Update(ctx, user, patch); err != nil {
			return embed.Model{}, fmt.Errorf("jobs: save embedding model: %w", err)
		}
		m.log.Info("jobs: embedding model chosen", "user_id", user, "model", model.Key)
	}
	return model, nil
}

// embedder returns the client for model with the user's key.
func (m *Manager) embedder(model embed.Model, st settings.Settings) (*embed.Client, error) {
	if model.NeedsKey() && strings.TrimSpace(st.EmbeddingAPIKey) == "" {
		return nil, fmt.Errorf("%w: embedding model %q needs embedding_api_key", ErrNotConfigured, model.Key)
	}
	e, err := embed.New(model, st.EmbeddingAPIKey, m.cfg.Embed)
	if err != nil {
		return nil, fmt.Errorf("jobs: embedder: %w", err)
	}
	c, ok := e.(*embed.Client)
	if !ok {
		return nil, fmt.Errorf("jobs: embedder for %q is a %T", model.Key, e)
	}
	return c, nil
}

// prepareCollection makes sure the user's collection is for model,
// recreating it (empty) when it holds another model's or size's vectors.
func (m *Manager) prepareCollection(ctx context.Context, user userid.ID, model embed.Model) (exists bool, err error) {
	have, dims, exists, err := m.cfg.Vectors.Info(ctx, user)
	if err != nil {
		return false, fmt.Errorf("jobs: collection info: %w", err)
	}
	if exists && (have != model.Key || dims != model.Dimensions) {
		if err := m.cfg.Vectors.Recreate(ctx, user, model.Key, model.Dimensions); err != nil {
			return false, fmt.Errorf("jobs: recreate collection: %w", err)
		}
		m.log.Info("jobs: collection recreated for another embedding model", "user_id", user, "from", have, "to", model.Key)
		return false, nil
	}
	return exists, nil
}
