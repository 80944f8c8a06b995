package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// grpcHost is Host over the plugin's one connection to the host services.
// It sends the call's capability token, and only that, with every request:
// the host scopes the request by the token.
type grpcHost struct {
	c     pluginpb.HostClient
	token string
}

func (h *grpcHost) ctx(ctx context.Context) context.Context {
	return metadata.NewOutgoingContext(ctx, metadata.Pairs(MetadataCapability, h.token))
}

// hostError wraps a host service failure, marking refusals with ErrDenied
// and services this host does not know (it is older than the SDK) with
// errors.ErrUnsupported.
func hostError(op string, err error) error {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.PermissionDenied:
			return fmt.Errorf("sdk: host %s: %w: %s", op, ErrDenied, st.Message())
		case codes.Unimplemented:
			return fmt.Errorf("sdk: host %s: %w: this inboxd does not offer it (it is older than the plugin's SDK)", op, errors.ErrUnsupported)
		}
	}
	return fmt.Errorf("sdk: host %s: %w", op, err)
}

func (h *grpcHost) Settings(ctx context.Context) (Settings, error) {
	r, err := h.c.GetSettings(h.ctx(ctx), &pluginpb.GetSettingsRequest{})
	if err != nil {
		return Settings{}, hostError("settings", err)
	}
	return Settings{
		IMAPServer: r.GetImapServer(), IMAPPort: int(r.GetImapPort()), IMAPSecurity: r.GetImapSecurity(),
		IMAPUsername: r.GetImapUsername(), IMAPPassword: r.GetImapPassword(), Timezone: r.GetTimezone(),
		LLMModel: r.GetLlmModel(), EmbeddingModel: r.GetEmbeddingModel(), DraftCreationEnabled: r.GetDraftCreationEnabled(),
	}, nil
}

func (h *grpcHost) KVGet(ctx context.Context, key string) (string, bool, error) {
	r, err := h.c.KVGet(h.ctx(ctx), &pluginpb.KVGetRequest{Key: key})
	if err != nil {
		return "", false, hostError("kv get", err)
	}
	return r.GetValue(), r.GetFound(), nil
}

func (h *grpcHost) KVSet(ctx context.Context, key, value string) error {
	if _, err := h.c.KVSet(h.ctx(ctx), &pluginpb.KVSetRequest{Key: key, Value: value}); err != nil {
		return hostError("kv set", err)
	}
	return nil
}

func (h *grpcHost) KVDelete(ctx context.Context, key string) error {
	if _, err := h.c.KVDelete(h.ctx(ctx), &pluginpb.KVDeleteRequest{Key: key}); err != nil {
		return hostError("kv delete", err)
	}
	return nil
}

func (h *grpcHost) VectorSearch(ctx context.Context, query string, limit int, exclude []string) ([]VectorHit, error) {
	r, err := h.c.VectorSearch(h.ctx(ctx), &pluginpb.VectorSearchRequest{Query: query, Limit: int32(min(max(limit, 0), 1<<20)), ExcludeThreadIds: exclude})
	if err != nil {
		return nil, hostError("vector search", err)
	}
	hits := make([]VectorHit, 0, len(r.GetHits()))
	for _, x := range r.GetHits() {
		hit := VectorHit{ThreadID: x.GetThreadId(), Score: x.GetScore()}
		if len(x.GetPayloadJson()) > 0 {
			if err := json.Unmarshal(x.GetPayloadJson(), &hit.Payload); err != nil {
				return nil, fmt.Errorf("sdk: host vector search: payload of %s: %w", hit.ThreadID, err)
			}
		}
		hits = append(hits, hit)
	}
	return hits, nil
}

func (h *grpcHost) VectorCount(ctx context.Context) (int, error) {
	r, err := h.c.VectorCount(h.ctx(ctx), &pluginpb.VectorCountRequest{})
	if err != nil {
		return 0, hostError("vector count", err)
	}
	return int(r.GetCount()), nil
}

func (h *grpcHost) VectorUpsert(ctx context.Context, docs []VectorDoc) error {
	req := &pluginpb.VectorUpsertRequest{Docs: make([]*pluginpb.VectorDoc, len(docs))}
	for i, d := range docs {
		var payload []byte
		if len(d.Payload) > 0 {
			var err error
			if payload, err = json.Marshal(d.Payload); err != nil {
				return fmt.Errorf("sdk: host vector upsert: payload of %q: %w", d.ThreadID, err)
			}
		}
		req.Docs[i] = &pluginpb.VectorDoc{ThreadId: d.ThreadID, Text: d.Text, PayloadJson: payload}
	}
	_, err := h.c.VectorUpsert(h.ctx(ctx), req)
	if status.Code(err) == codes.ResourceExhausted {
		// gRPC refused the message before the host could count it: say
		// which limit the caller ran into rather than the transport's.
		return fmt.Errorf("sdk: host vector upsert: %d documents too large for one call (at most %d documents and %d bytes: split the batch): %w",
			len(docs), MaxVectorUpsertDocs, MaxVectorUpsertBytes, err)
	}
	if err != nil {
		return hostError("vector upsert", err)
	}
	return nil
}

func (h *grpcHost) Complete(ctx context.Context, req Completion) (string, error) {
	r, err := h.c.Complete(h.ctx(ctx), &pluginpb.CompleteRequest{System: req.System, Prompt: req.Prompt, Json: req.JSON})
	if err != nil {
		return "", hostError("complete", err)
	}
	return r.GetText(), nil
}

func (h *grpcHost) ToneProfile(ctx context.Context) (map[string]string, error) {
	r, err := h.c.ToneProfile(h.ctx(ctx), &pluginpb.ToneProfileRequest{})
	if err != nil {
		return nil, hostError("tone profile", err)
	}
	out := make(map[string]string, len(r.GetProfiles()))
	for k, v := range r.GetProfiles() {
		out[k] = v
	}
	return out, nil
}
