package pluginhost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// Limits of the host services.
const (
	maxKVKey        = 200
	maxKVValue      = 1 << 20
	maxSearchLimit  = 100
	toneProfileKey  = "tone_of_voice_profile"
	pluginKeyPrefix = "plugin:"
)

// hostService serves the host services to one plugin process. Every request
// is authorised by the capability token it carries (the interceptor); the
// user is the token's, never one the plugin names.
type hostService struct {
	pluginpb.UnimplementedHostServer
	h      *Host
	plugin string
	log    *slog.Logger
	needs  atomic.Pointer[map[sdk.Need]bool] // set once Describe answered, before the first call
}

// needed reports whether the plugin declared n.
func (s *hostService) needed(n sdk.Need) bool {
	needs := s.needs.Load()
	return needs != nil && (*needs)[n]
}

// newServer is the broker's server constructor.
func (s *hostService) newServer(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.UnaryInterceptor(s.authorise))
	srv := grpc.NewServer(opts...)
	pluginpb.RegisterHostServer(srv, s)
	return srv
}

type capKey struct{}

// authorise verifies the request's capability token, bounds the request by
// the token's expiry and hands the capability to the method.
func (s *hostService) authorise(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	toks := md.Get(sdk.MetadataCapability)
	var c capability
	var err error
	if len(toks) > 1 {
		err = errTokenForged
	} else {
		tok := ""
		if len(toks) == 1 {
			tok = toks[0]
		}
		c, err = s.h.tokens.verify(tok, s.plugin)
	}
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	if err != nil {
		s.log.Warn("plugin host-service request refused", "method", method, "reason", err.Error())
		return nil, status.Errorf(codes.PermissionDenied, "pluginhost: %v", err)
	}
	ctx, cancel := context.WithDeadline(ctx, c.expiry)
	defer cancel()
	return handler(context.WithValue(ctx, capKey{}, c), req)
}

func capFrom(ctx context.Context) capability {
	c, _ := ctx.Value(capKey{}).(capability)
	return c
}

// serviceError turns a store error into a status without leaking details
// beyond the error text (which holds no secrets by the stores' contracts).
func serviceError(op string, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "pluginhost: %s: %v", op, err)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "pluginhost: %s: %v", op, err)
	case errors.Is(err, vectors.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "pluginhost: %s: %v", op, err)
	case errors.Is(err, vectors.ErrModelMismatch):
		return status.Errorf(codes.FailedPrecondition, "pluginhost: %s: %v", op, err)
	}
	return status.Errorf(codes.Internal, "pluginhost: %s: %v", op, err)
}

func unconfigured(what string) error {
	return status.Errorf(codes.Unavailable, "pluginhost: no %s configured in this daemon", what)
}

func (s *hostService) GetSettings(ctx context.Context, _ *pluginpb.GetSettingsRequest) (*pluginpb.GetSettingsResponse, error) {
	src := s.h.cfg.Services.Settings
	if src == nil {
		return nil, unconfigured("settings store")
	}
	c := capFrom(ctx)
	st, err := src.Get(ctx, c.user)
	if err != nil {
		return nil, serviceError("settings", err)
	}
	r := &pluginpb.GetSettingsResponse{
		ImapServer: st.IMAPServer, ImapPort: int32(st.IMAPPort), ImapSecurity: st.IMAPSecurity, ImapUsername: st.IMAPUsername,
		Timezone: st.Timezone, LlmModel: st.LLMModel, EmbeddingModel: st.EmbeddingModel, DraftCreationEnabled: st.DraftCreationEnabled,
	}
	if s.needed(sdk.NeedIMAPCredentials) {
		r.ImapPassword = st.IMAPPassword
	}
	return r, nil
}

// kvKey is the plugin's key in the user's space: user:{uuid}:plugin:{name}:{key}.
func (s *hostService) kvKey(c capability, key string) (string, error) {
	if key == "" || len(key) > maxKVKey {
		return "", status.Errorf(codes.InvalidArgument, "pluginhost: a KV key must be 1-%d bytes", maxKVKey)
	}
	for _, r := range key {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return "", status.Error(codes.InvalidArgument, "pluginhost: a KV key must be printable, without spaces")
		}
	}
	return c.user.Key(pluginKeyPrefix + s.plugin + ":" + key), nil
}

// pluginKV returns the KV store and the calling user's key for a plugin
// KV request (see kvKey).
func (s *hostService) pluginKV(ctx context.Context, key string) (kv.Store, string, error) {
	store := s.h.cfg.Services.KV
	if store == nil {
		return nil, "", unconfigured("KV store")
	}
	k, err := s.kvKey(capFrom(ctx), key)
	return store, k, err
}

func (s *hostService) KVGet(ctx context.Context, req *pluginpb.KVGetRequest) (*pluginpb.KVGetResponse, error) {
	store, key, err := s.pluginKV(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	v, err := store.Get(ctx, key)
	if errors.Is(err, kv.ErrNotFound) {
		return &pluginpb.KVGetResponse{}, nil
	}
	if err != nil {
		return nil, serviceError("kv get", err)
	}
	return &pluginpb.KVGetResponse{Value: v, Found: true}, nil
}

func (s *hostService) KVSet(ctx context.Context, req *pluginpb.KVSetRequest) (*pluginpb.KVSetResponse, error) {
	store, key, err := s.pluginKV(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	if len(req.GetValue()) > maxKVValue {
		return nil, status.Errorf(codes.InvalidArgument, "pluginhost: a KV value must be at most %d bytes", maxKVValue)
	}
	if err := store.Set(ctx, key, req.GetValue(), 0); err != nil {
		return nil, serviceError("kv set", err)
	}
	return &pluginpb.KVSetResponse{}, nil
}

func (s *hostService) KVDelete(ctx context.Context, req *pluginpb.KVDeleteRequest) (*pluginpb.KVDeleteResponse, error) {
	store, key, err := s.pluginKV(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	if err := store.Delete(ctx, key); err != nil {
		return nil, serviceError("kv delete", err)
	}
	return &pluginpb.KVDeleteResponse{}, nil
}

func (s *hostService) VectorSearch(ctx context.Context, req *pluginpb.VectorSearchRequest) (*pluginpb.VectorSearchResponse, error) {
	svc := s.h.cfg.Services
	if svc.Vectors == nil || svc.Embedder == nil {
		return nil, unconfigured("vector store")
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxSearchLimit {
		return nil, status.Errorf(codes.InvalidArgument, "pluginhost: vector search limit must be 1-%d", maxSearchLimit)
	}
	c := capFrom(ctx)
	e, err := s.embedder(ctx, c)
	if err != nil {
		return nil, err
	}
	hits, err := vectors.Search(ctx, svc.Vectors, e, c.user, req.GetQuery(), limit, req.GetExcludeThreadIds())
	if err != nil {
		return nil, serviceError("vector search", err)
	}
	r := &pluginpb.VectorSearchResponse{Hits: make([]*pluginpb.VectorHit, 0, len(hits))}
	for _, h := range hits {
		payload, err := json.Marshal(h.Payload)
		if err != nil {
			return nil, serviceError("vector search", fmt.Errorf("payload of %s: %w", h.ID, err))
		}
		r.Hits = append(r.Hits, &pluginpb.VectorHit{ThreadId: h.ID, Score: h.Score, PayloadJson: payload})
	}
	return r, nil
}

// embedder is the user's embedder (the user's embedding model and key).
func (s *hostService) embedder(ctx context.Context, c capability) (embed.Embedder, error) {
	e, err := s.h.cfg.Services.Embedder(ctx, c.user)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "pluginhost: the user's embedder: %v", err)
	}
	return e, nil
}

// VectorUpsert embeds the documents with the user's embedding model and
// writes them into the token's user's collection. Everything that can be
// refused is checked before the first text is embedded: embedding costs the
// user money at their provider.
func (s *hostService) VectorUpsert(ctx context.Context, req *pluginpb.VectorUpsertRequest) (*pluginpb.VectorUpsertResponse, error) {
	svc := s.h.cfg.Services
	if svc.Vectors == nil || svc.Embedder == nil {
		return nil, unconfigured("vector store")
	}
	points, texts, err := upsertPoints(req.GetDocs())
	if err != nil {
		return nil, err
	}
	if len(points) == 0 {
		return &pluginpb.VectorUpsertResponse{}, nil
	}
	c := capFrom(ctx)
	e, err := s.embedder(ctx, c)
	if err != nil {
		return nil, err
	}
	// The collection is made for, and checked against, the model's catalog
	// key: an embedder that cannot name it could write vectors of a model
	// the collection does not hold.
	named, ok := e.(interface{ Model() embed.Model })
	if !ok {
		return nil, status.Errorf(codes.Internal, "pluginhost: vector upsert: the user's embedder (%T) does not name its model", e)
	}
	// Embed chunks long texts and averages the chunks, as the inbox jobs'
	// thread embeddings do.
	vecs, err := e.Embed(ctx, texts)
	if err != nil {
		return nil, serviceError("vector upsert: embed", err)
	}
	if len(vecs) != len(points) {
		return nil, serviceError("vector upsert: embed", fmt.Errorf("%d vectors for %d texts", len(vecs), len(points)))
	}
	for i := range points {
		points[i].Vector = vecs[i]
	}
	if err := svc.Vectors.Upsert(ctx, c.user, named.Model().Key, e.Dimensions(), points); err != nil {
		return nil, serviceError("vector upsert", err)
	}
	return &pluginpb.VectorUpsertResponse{}, nil
}

// upsertPoints checks a VectorUpsert request against the limits and turns
// its documents into points without vectors, and the texts to embed.
func upsertPoints(docs []*pluginpb.VectorDoc) ([]vectors.Point, []string, error) {
	if len(docs) > sdk.MaxVectorUpsertDocs {
		return nil, nil, status.Errorf(codes.InvalidArgument,
			"pluginhost: vector upsert: %d documents in one request, at most %d: split the batch", len(docs), sdk.MaxVectorUpsertDocs)
	}
	size := 0
	for _, d := range docs {
		size += len(d.GetThreadId()) + len(d.GetText()) + len(d.GetPayloadJson())
	}
	if size > sdk.MaxVectorUpsertBytes {
		return nil, nil, status.Errorf(codes.InvalidArgument,
			"pluginhost: vector upsert: %d bytes of thread ids, texts and payloads in one request, at most %d: split the batch", size, sdk.MaxVectorUpsertBytes)
	}
	points := make([]vectors.Point, len(docs))
	texts := make([]string, len(docs))
	for i, d := range docs {
		bad := func(problem string) error {
			return status.Errorf(codes.InvalidArgument, "pluginhost: vector upsert: document %d (thread %q): %s", i+1, d.GetThreadId(), problem)
		}
		if d.GetThreadId() == "" {
			return nil, nil, bad("no thread id")
		}
		if strings.TrimSpace(d.GetText()) == "" {
			return nil, nil, bad("empty text")
		}
		var payload map[string]any
		if raw := d.GetPayloadJson(); len(raw) > 0 {
			// Numbers stay json.Number: a large integer keeps its digits.
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			if err := dec.Decode(&payload); err != nil || dec.More() {
				return nil, nil, bad("the payload is not one JSON object")
			}
		}
		points[i] = vectors.Point{ID: d.GetThreadId(), Payload: payload}
		texts[i] = d.GetText()
	}
	return points, texts, nil
}

func (s *hostService) VectorCount(ctx context.Context, _ *pluginpb.VectorCountRequest) (*pluginpb.VectorCountResponse, error) {
	store := s.h.cfg.Services.Vectors
	if store == nil {
		return nil, unconfigured("vector store")
	}
	n, err := store.Count(ctx, capFrom(ctx).user)
	if err != nil {
		return nil, serviceError("vector count", err)
	}
	return &pluginpb.VectorCountResponse{Count: int64(n)}, nil
}

func (s *hostService) Complete(ctx context.Context, req *pluginpb.CompleteRequest) (*pluginpb.CompleteResponse, error) {
	svc := s.h.cfg.Services
	if svc.LLM == nil {
		return nil, unconfigured("LLM client")
	}
	if strings.TrimSpace(req.GetPrompt()) == "" {
		return nil, status.Error(codes.InvalidArgument, "pluginhost: empty prompt")
	}
	c := capFrom(ctx)
	ep, model, err := s.endpoint(ctx, c)
	if err != nil {
		return nil, err
	}
	var msgs []llm.Message
	if req.GetSystem() != "" {
		msgs = append(msgs, llm.Message{Role: llm.RoleSystem, Content: req.GetSystem()})
	}
	msgs = append(msgs, llm.Message{Role: llm.RoleUser, Content: req.GetPrompt()})
	resp, err := svc.LLM.Chat(ctx, llm.Request{Endpoint: ep, Model: model, Messages: msgs, JSONObject: req.GetJson()})
	if err != nil {
		return nil, serviceError("complete", err)
	}
	return &pluginpb.CompleteResponse{Text: resp.Message.Content}, nil
}

// endpoint is the user's LLM endpoint and model.
func (s *hostService) endpoint(ctx context.Context, c capability) (llm.Endpoint, string, error) {
	svc := s.h.cfg.Services
	if svc.LLMEndpoint != nil {
		ep, model, err := svc.LLMEndpoint(ctx, c.user)
		if err != nil {
			return llm.Endpoint{}, "", status.Errorf(codes.FailedPrecondition, "pluginhost: the user's LLM: %v", err)
		}
		return ep, model, nil
	}
	if svc.Settings == nil {
		return llm.Endpoint{}, "", unconfigured("settings store")
	}
	st, err := svc.Settings.Get(ctx, c.user)
	if err != nil {
		return llm.Endpoint{}, "", serviceError("settings", err)
	}
	if st.LLMModel == "" || (st.LLMAPIKey == "" && st.LLMBaseURL == "") {
		return llm.Endpoint{}, "", status.Error(codes.FailedPrecondition, "pluginhost: the user has not configured an LLM (llm_model and llm_api_key or llm_base_url)")
	}
	return llm.Endpoint{BaseURL: st.LLMBaseURL, APIKey: st.LLMAPIKey}, st.LLMModel, nil
}

func (s *hostService) ToneProfile(ctx context.Context, _ *pluginpb.ToneProfileRequest) (*pluginpb.ToneProfileResponse, error) {
	if !s.needed(sdk.NeedToneProfile) {
		return nil, status.Errorf(codes.PermissionDenied, "pluginhost: plugin %s did not declare the need %q", s.plugin, sdk.NeedToneProfile)
	}
	store := s.h.cfg.Services.KV
	if store == nil {
		return nil, unconfigured("KV store")
	}
	raw, err := store.Get(ctx, capFrom(ctx).user.Key(toneProfileKey))
	if errors.Is(err, kv.ErrNotFound) {
		return &pluginpb.ToneProfileResponse{Profiles: map[string]string{}}, nil
	}
	if err != nil {
		return nil, serviceError("tone profile", err)
	}
	profiles := map[string]string{}
	if err := json.Unmarshal([]byte(raw), &profiles); err != nil {
		return nil, status.Errorf(codes.DataLoss, "pluginhost: the user's tone-of-voice profile is not a JSON object of strings: %v", err)
	}
	return &pluginpb.ToneProfileResponse{Profiles: profiles}, nil
}
