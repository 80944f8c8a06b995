package pluginhost

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/isolationcheck"
	"github.com/inboxd/inboxd/internal/testsvc"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// TestHostServicesIsolationSweep calls every RPC of the Host service, as
// the generated service descriptor lists them (a new RPC is covered the day
// it is added), over the host's own gRPC server (the capability
// interceptor included), on real stores holding data of alice and bob.
//
// With alice's live token, every request asks for bob's data in every way
// its fields allow (bob's id, bob's keys spelled out, bob's thread ids, a
// query for bob's mail) while the call's metadata claims to be bob's: the
// answers hold nothing of bob's, and every write lands in alice's space for
// this plugin. With bob's token after its call ended, alice's too, a token
// of another plugin, bob's expired token, bob's id forged into alice's
// token, two tokens, or none, every request is refused and writes nothing.
// bob's data is unchanged at the end.
func TestHostServicesIsolationSweep(t *testing.T) {
	e := newServiceSweep(t)
	alice, bob := e.alice, e.bob
	ctx := context.Background()
	rpcs := hostRPCs(t)
	bobKV := e.scan(t, bob)
	bobPoints := e.points(t, bob)

	// Refused: each token that is not alice's live one for this plugin
	// (the metadata claiming bob changes nothing).
	live := func(u userid.ID, plugin string) string {
		tok, revoke := e.h.tokens.mint(u, "inst", plugin, time.Now().Add(time.Minute))
		t.Cleanup(revoke)
		return tok
	}
	ended := func(u userid.ID) string {
		tok, revoke := e.h.tokens.mint(u, "inst", "sweep", time.Now().Add(time.Minute))
		revoke()
		return tok
	}
	expired, revoke := e.h.tokens.mint(bob, "inst", "sweep", time.Now().Add(-time.Second))
	t.Cleanup(revoke)
	aliceTok := live(alice, "sweep")
	refused := map[string][]string{
		"bob's token after its call ended":   {ended(bob)},
		"alice's token after its call ended": {ended(alice)},
		"bob's token of another plugin":      {live(bob, "other")},
		"alice's token of another plugin":    {live(alice, "other")},
		"bob's expired token":                {expired},
		"bob forged into alice's token":      {forgeUser(t, aliceTok, alice, bob)},
		"alice's and bob's tokens":           {aliceTok, live(bob, "sweep")},
		"no token":                           nil,
	}

	claim := metadata.Pairs(sdk.MetadataUserID, bob.String(), sdk.MetadataInstanceID, "inst-bob", sdk.MetadataWorkflowID, "wf-bob")
	e.rec.SetPhase("refused")
	calls := 0
	for _, rpc := range rpcs {
		for _, req := range e.requests(t, rpc) {
			for _, why := range slices.Sorted(maps.Keys(refused)) {
				calls++
				_, err := e.invoke(ctx, rpc, req, refused[why], claim)
				if status.Code(err) != codes.PermissionDenied {
					t.Errorf("%s with %s: %v, want PermissionDenied", rpc.name, why, err)
				}
			}
		}
	}
	for _, w := range e.rec.Writes() {
		if w.Phase == "refused" {
			t.Errorf("a refused request wrote the KV: %s %q", w.Op, w.Key)
		}
	}

	// alice's live token, asking for bob's data, claiming bob in metadata.
	e.rec.SetPhase("alice")
	for _, rpc := range rpcs {
		ok := 0
		for _, req := range e.requests(t, rpc) {
			calls++
			resp, err := e.invoke(ctx, rpc, req, []string{aliceTok}, claim)
			if err == nil {
				ok++
			}
			answer := dumpMessage(resp.ProtoReflect())
			if err != nil {
				answer += " " + err.Error()
			}
			if leak := e.bobIn(answer); leak != "" {
				t.Errorf("%s with alice's token (request %s) answers bob's data (%s): %.1000s", rpc.name, dumpMessage(req.ProtoReflect()), leak, answer)
			}
		}
		if ok == 0 {
			t.Errorf("%s: no request with alice's token succeeded, so the sweep never reached its handler: teach requests() its fields", rpc.name)
		}
	}
	t.Logf("host services sweep: %d RPCs, %d calls", len(rpcs), calls)
	// The detector works: bob's own live token reads bob's settings.
	for _, rpc := range rpcs {
		if rpc.name == "GetSettings" {
			resp, err := e.invoke(ctx, rpc, rpc.in.New().Interface(), []string{live(bob, "sweep")}, nil)
			if err != nil || e.bobIn(dumpMessage(resp.ProtoReflect())) == "" {
				t.Errorf("the detector does not see bob's content in bob's own settings: %v %s", err, dumpMessage(resp.ProtoReflect()))
			}
		}
	}

	exists := func(id userid.ID) bool { return id == alice || id == bob }
	for _, w := range e.rec.Writes() {
		if w.Phase != "alice" {
			continue
		}
		if problem := isolationcheck.KeyProblem(w.Key, exists); problem != "" || !strings.HasPrefix(w.Key, alice.Key("plugin:sweep:")) {
			t.Errorf("alice's plugin wrote %s %q: outside alice's space for the plugin %s", w.Op, w.Key, problem)
		}
	}
	if after := e.scan(t, bob); !maps.Equal(after, bobKV) {
		t.Errorf("bob's KV changed:\nbefore %v\nafter  %v", bobKV, after)
	}
	if after := e.points(t, bob); after != bobPoints {
		t.Errorf("bob's vectors changed:\nbefore %s\nafter  %s", bobPoints, after)
	}
}

// serviceSweep is a host whose services run over real stores (SQLite KV,
// settings with sealed secrets, the embedded vector store with the offline
// embedder), served to a plugin named "sweep" that declared every need.
type serviceSweep struct {
	alice  userid.ID
	bob    userid.ID
	h      *Host
	rec    *isolationcheck.RecordingKV
	vec    *vectors.Embedded
	emb    embed.Embedder
	conn   *grpc.ClientConn
	marks  map[userid.ID]string // in every piece of the user's content
	sent   []string             // every string alice's requests carried
	bobIDs []string             // bob's thread ids
}

func newServiceSweep(t *testing.T) *serviceSweep {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	model := cat.Offline()
	emb, err := embed.New(model, "", embed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &serviceSweep{rec: isolationcheck.NewRecordingKV(kv.NewSQL(db)), vec: vectors.NewEmbedded(db, vectors.EmbeddedOptions{}), emb: emb,
		marks: map[userid.ID]string{}}
	us := users.NewStore(db)
	for _, u := range []*userid.ID{&e.alice, &e.bob} {
		created, err := us.Create(context.Background(), users.NewUser{Email: userid.New().String() + "@example.com"})
		if err != nil {
			t.Fatal(err)
		}
		*u = created.ID
	}
	alice, bob := e.alice, e.bob
	e.marks[alice], e.marks[bob] = "alicemark"+alice.String()[:8], "bobmark"+bob.String()[:8]
	st := settings.NewStore(e.rec, box)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e.h, err = New(Config{Logger: logger, Services: HostServices{
		Settings: st, KV: e.rec, Vectors: e.vec, LLM: keyEcho{},
		Embedder: func(context.Context, userid.ID) (embed.Embedder, error) { return emb, nil },
	}})
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	for _, u := range []userid.ID{alice, bob} {
		m := e.marks[u]
		raw, _ := json.Marshal(map[string]any{
			"imap_server": "imap." + m + ".example", "imap_username": m + "-user", "imap_password": m + "-imap-password",
			"llm_base_url": "http://127.0.0.1:1/v1", "llm_api_key": m + "-llm-key", "llm_model": "model-" + m,
			"embedding_model": model.Key, "timezone": "Europe/Amsterdam",
		})
		p, err := settings.DecodePatch(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Update(ctx, u, p); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"plugin:sweep:note", "plugin:other:note"} {
			if err := e.rec.Set(ctx, u.Key(k), "note of "+m, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.rec.Set(ctx, u.Key("tone_of_voice_profile"), `{"en":"Tone of `+m+`"}`, 0); err != nil {
			t.Fatal(err)
		}
		texts := []string{"Garden party with " + m, "Quote request from " + m, "Invoice of " + m}
		vecs, err := emb.Embed(ctx, texts)
		if err != nil {
			t.Fatal(err)
		}
		var points []vectors.Point
		for i, text := range texts {
			id := fmt.Sprintf("thread-%s-%d", m, i)
			points = append(points, vectors.Point{ID: id, Vector: vecs[i], Payload: map[string]any{"subject": text}})
			if u == bob {
				e.bobIDs = append(e.bobIDs, id)
			}
		}
		if err := e.vec.Upsert(ctx, u, model.Key, model.Dimensions, points); err != nil {
			t.Fatal(err)
		}
	}

	svc := &hostService{h: e.h, plugin: "sweep", log: logger}
	svc.needs.Store(&map[sdk.Need]bool{sdk.NeedIMAPCredentials: true, sdk.NeedToneProfile: true})
	lis := bufconn.Listen(1 << 20)
	srv := svc.newServer(nil)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	e.conn, err = grpc.NewClient("passthrough:///host", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close() })
	return e
}

// keyEcho is an LLM that says whose endpoint and model it was asked with.
type keyEcho struct{}

func (keyEcho) Chat(_ context.Context, req llm.Request) (llm.Response, error) {
	return llm.Response{Message: llm.Message{Role: llm.RoleAssistant,
		Content: "asked with key " + req.Endpoint.APIKey + " for model " + req.Model}}, nil
}

// hostRPC is one unary RPC of the Host service and its message types.
type hostRPC struct {
	name    string
	method  string // the full method name
	in, out protoreflect.MessageType
}

// hostRPCs lists the Host service's RPCs from the generated descriptors.
func hostRPCs(t *testing.T) []hostRPC {
	t.Helper()
	sd := pluginpb.Host_ServiceDesc
	if len(sd.Streams) > 0 {
		t.Fatalf("the Host service has streaming RPCs %v: the sweep does not cover them yet", sd.Streams)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(sd.ServiceName))
	if err != nil {
		t.Fatal(err)
	}
	service := d.(protoreflect.ServiceDescriptor)
	if service.Methods().Len() != len(sd.Methods) {
		t.Fatalf("the descriptor has %d methods, the grpc.ServiceDesc %d", service.Methods().Len(), len(sd.Methods))
	}
	var rpcs []hostRPC
	for _, m := range sd.Methods {
		md := service.Methods().ByName(protoreflect.Name(m.MethodName))
		if md == nil {
			t.Fatalf("RPC %s is not in the descriptor", m.MethodName)
		}
		in, err1 := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		out, err2 := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v %v", m.MethodName, err1, err2)
		}
		rpcs = append(rpcs, hostRPC{name: m.MethodName, method: "/" + sd.ServiceName + "/" + m.MethodName, in: in, out: out})
	}
	if len(rpcs) < 8 {
		t.Fatalf("only %d RPCs in the Host service", len(rpcs))
	}
	return rpcs
}

// requests are an empty request and, for each way of naming bob's data,
// one with every field set to it (strings to it, string lists to it and
// bob's thread ids, bytes to a JSON object naming bob, numbers small and
// valid-looking, nested messages alike).
func (e *serviceSweep) requests(t *testing.T, rpc hostRPC) []protoreflect.ProtoMessage {
	t.Helper()
	out := []protoreflect.ProtoMessage{rpc.in.New().Interface()}
	for _, v := range []string{
		e.bob.String(),
		e.bob.Key("plugin:sweep:note"), // bob's key, spelled out
		"../" + e.bob.Key("plugin:other:note"),
		"plugin:other:note", // another plugin's key
		e.bob.Key("tone_of_voice_profile"),
		e.bobIDs[0],    // bob's thread
		"Garden party", // words of bob's mail, as a query
		"note",         // the key bob uses: alice's own
	} {
		m := rpc.in.New()
		e.fill(m, v, 0)
		out = append(out, m.Interface())
	}
	return out
}

func (e *serviceSweep) fill(m protoreflect.Message, v string, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			val := e.scalar(fd.MapValue(), v)
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				val = m.Mutable(fd).Map().NewValue()
				e.fill(val.Message(), v, depth+1)
			}
			m.Mutable(fd).Map().Set(protoreflect.ValueOfString(v).MapKey(), val)
		case fd.IsList():
			list := m.Mutable(fd).List()
			switch fd.Kind() {
			case protoreflect.MessageKind:
				el := list.NewElement()
				e.fill(el.Message(), v, depth+1)
				list.Append(el)
			case protoreflect.StringKind:
				for _, s := range append([]string{v}, e.bobIDs...) {
					list.Append(protoreflect.ValueOfString(s))
				}
			default:
				list.Append(e.scalar(fd, v))
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth < 4 {
				e.fill(m.Mutable(fd).Message(), v, depth+1)
			}
		default:
			m.Set(fd, e.scalar(fd, v))
		}
	}
}

func (e *serviceSweep) scalar(fd protoreflect.FieldDescriptor, v string) protoreflect.Value {
	e.sent = append(e.sent, v)
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(v)
	case protoreflect.BytesKind:
		b, _ := json.Marshal(map[string]string{"thread_id": v, "user_id": e.bob.String(), "note": v})
		return protoreflect.ValueOfBytes(b)
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(5)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(5)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(5)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(0.5)
	case protoreflect.EnumKind:
		if vals := fd.Enum().Values(); vals.Len() > 1 {
			return protoreflect.ValueOfEnum(vals.Get(1).Number())
		}
		return protoreflect.ValueOfEnum(0)
	}
	return fd.Default()
}

// invoke calls rpc with the capability tokens (none: no token) and the
// extra metadata.
func (e *serviceSweep) invoke(ctx context.Context, rpc hostRPC, req protoreflect.ProtoMessage, tokens []string,
	extra metadata.MD) (protoreflect.ProtoMessage, error) {
	md := extra.Copy()
	if md == nil {
		md = metadata.MD{}
	}
	for _, tok := range tokens {
		md.Append(sdk.MetadataCapability, tok)
	}
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 10*time.Second)
	defer cancel()
	resp := rpc.out.New().Interface()
	err := e.conn.Invoke(ctx, rpc.method, req, resp)
	return resp, err
}

// bobIn names what of bob's is in an answer to alice ("" when nothing):
// bob's mark, in all of bob's content, once the strings alice's requests
// carried (bob's ids and keys, which alice may store and read back in her
// own space) are taken out.
func (e *serviceSweep) bobIn(answer string) string {
	for _, s := range e.sent {
		answer = strings.ReplaceAll(answer, s, "")
	}
	for _, id := range e.bobIDs {
		answer = strings.ReplaceAll(answer, id, "")
	}
	if strings.Contains(answer, e.marks[e.bob]) {
		return "bob's content"
	}
	return ""
}

// dumpMessage renders every value of m, bytes as text (a payload is JSON),
// so that a leak cannot hide in base64.
func dumpMessage(m protoreflect.Message) string {
	var b strings.Builder
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fmt.Fprintf(&b, "%s=%s ", fd.Name(), dumpField(fd, v))
		return true
	})
	return b.String()
}

func dumpField(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch {
	case fd.IsList():
		var parts []string
		for i := range v.List().Len() {
			parts = append(parts, dumpOne(fd, v.List().Get(i)))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case fd.IsMap():
		var parts []string
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			parts = append(parts, k.String()+":"+dumpOne(fd.MapValue(), mv))
			return true
		})
		sort.Strings(parts)
		return "{" + strings.Join(parts, " ") + "}"
	}
	return dumpOne(fd, v)
}

func dumpOne(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.MessageKind:
		return "{" + dumpMessage(v.Message()) + "}"
	case protoreflect.BytesKind:
		return string(v.Bytes())
	}
	return v.String()
}

// forgeUser puts to's id in place of from's in tok's signed payload,
// keeping the signature.
func forgeUser(t *testing.T, tok string, from, to userid.ID) string {
	t.Helper()
	payload, mac, _ := strings.Cut(tok, ".")
	p, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(p), from.String(), to.String(), 1)
	if forged == string(p) {
		t.Fatal("the token does not carry the user id")
	}
	return base64.RawURLEncoding.EncodeToString([]byte(forged)) + "." + mac
}

func (e *serviceSweep) scan(t *testing.T, u userid.ID) map[string]string {
	t.Helper()
	m, err := e.rec.Scan(context.Background(), u.KeyPrefix())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// points describes u's collection: its size and what a search finds.
func (e *serviceSweep) points(t *testing.T, u userid.ID) string {
	t.Helper()
	ctx := context.Background()
	n, err := e.vec.Count(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	hits, err := vectors.Search(ctx, e.vec, e.emb, u, "garden party quote invoice", 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(hits)
	return fmt.Sprintf("%d points, search %s", n, b)
}
