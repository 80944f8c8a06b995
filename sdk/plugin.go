package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// MagicCookieKey and MagicCookieValue make up the handshake cookie: inboxd
// sets the environment variable MagicCookieKey to MagicCookieValue when it
// starts a plugin, and a plugin binary run any other way says so and exits.
const (
	MagicCookieKey   = "INBOXD_PLUGIN"
	MagicCookieValue = "e5c8a3d0-tools-over-grpc"
)

// ProtocolVersion is the newest wire protocol this SDK speaks. Host and
// plugin negotiate it in the handshake (go-plugin VersionedPlugins), so a
// host that speaks newer versions keeps serving plugins built against
// older SDKs.
const ProtocolVersion = 1

// PluginSetName is the name of the one go-plugin plugin a plugin process
// serves in its plugin set (the host dispenses it by this name).
const PluginSetName = "inboxd"

// Metadata keys of every unary CallTool (the user context; CallStream
// carries it in its request messages) and of every host service request
// (the capability token).
const (
	MetadataUserID     = "x-inboxd-user-id"
	MetadataWorkflowID = "x-inboxd-workflow-id"
	MetadataInstanceID = "x-inboxd-instance-id"
	MetadataStepID     = "x-inboxd-step-id"
	MetadataCapability = "x-inboxd-capability"
)

// Plugin is what a plugin binary serves: its name (1-24 lowercase letters,
// digits and underscores, starting with a letter; no hyphens, because agents
// see its tools as "{plugin}-{tool}"), its version, its tools and the
// secrets it needs.
type Plugin struct {
	Name    string
	Version string
	Tools   []Tool
	// Needs declares the user data beyond plain settings that the plugin's
	// host services may hand out; anything not declared is withheld.
	Needs []Need
}

// Need is a secret or sensitive piece of user data a plugin declares it needs.
type Need string

// The needs a plugin can declare.
const (
	// NeedIMAPCredentials lets Host.Settings return the IMAP password.
	NeedIMAPCredentials Need = "imap_credentials"
	// NeedToneProfile lets Host.ToneProfile return the user's tone-of-voice profiles.
	NeedToneProfile Need = "tone_profile"
)

// Tool is one tool of a plugin.
type Tool struct {
	// Name is the tool's name within the plugin (1-39 letters, digits, '_').
	Name string
	// Description tells the model what the tool does and when to use it.
	Description string
	// InputSchema is the JSON Schema of the arguments, a JSON object;
	// nil means {"type":"object"}.
	InputSchema json.RawMessage
	// Handler runs the tool. UserFrom(ctx) and HostFrom(ctx) give the
	// calling user and the host services scoped to that user. A returned
	// error is a failure of the call (reported to the workflow as an
	// error); a Result with IsError is an answer the model should read.
	Handler func(ctx context.Context, call Call) (Result, error)
}

// Call is one invocation of a tool.
type Call struct {
	// Arguments is the JSON object the model (or workflow) passed.
	Arguments json.RawMessage
}

// Bind decodes the arguments into v (a pointer to a struct or map).
// Unknown fields, trailing data and type mismatches are refused with an
// error that names the problem; empty arguments decode as {}.
func (c Call) Bind(v any) error {
	args := bytes.TrimSpace(c.Arguments)
	if len(args) == 0 || bytes.Equal(args, []byte("null")) {
		args = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return fmt.Errorf("sdk: bad arguments: field %q must be %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return fmt.Errorf("sdk: bad arguments: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("sdk: bad arguments: trailing data after the JSON object")
	}
	return nil
}

// Result is a tool's answer.
type Result struct {
	// Content is any JSON value: an object, or a string for text.
	Content json.RawMessage
	// IsError marks a tool-level failure the model should see (bad
	// arguments, message not found, not configured).
	IsError bool
}

// JSON returns a Result holding v encoded as JSON.
func JSON(v any) (Result, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Result{}, fmt.Errorf("sdk: encode result: %w", err)
	}
	return Result{Content: b}, nil
}

// Text returns a Result holding s as a JSON string.
func Text(s string) Result {
	b, _ := json.Marshal(s) // a string always encodes
	return Result{Content: b}
}

// Errorf returns an IsError Result whose content is the formatted message
// as a JSON string: for failures the model should read and react to.
func Errorf(format string, a ...any) Result {
	r := Text(fmt.Sprintf(format, a...))
	r.IsError = true
	return r
}

var (
	pluginNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,23}$`)
	toolNameRE   = regexp.MustCompile(`^[A-Za-z0-9_]{1,39}$`)
)

// Validate checks the plugin's definition: its name, unique well-formed
// tool names with handlers (so that "{plugin}-{tool}" fits the 64
// characters LLM providers allow a function name), input schemas that are JSON objects, and known
// needs. Serve and sdktest refuse an invalid plugin.
func (p Plugin) Validate() error {
	if !pluginNameRE.MatchString(p.Name) {
		return fmt.Errorf("sdk: plugin name %q must be 1-24 lowercase letters, digits or '_', starting with a letter", p.Name)
	}
	seen := map[string]bool{}
	for i, t := range p.Tools {
		if !toolNameRE.MatchString(t.Name) {
			return fmt.Errorf("sdk: plugin %s: tool %d: name %q must be 1-39 letters, digits or '_'", p.Name, i, t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("sdk: plugin %s: tool %q defined twice", p.Name, t.Name)
		}
		seen[t.Name] = true
		if t.Handler == nil {
			return fmt.Errorf("sdk: plugin %s: tool %q has no handler", p.Name, t.Name)
		}
		if len(t.InputSchema) > 0 {
			var schema map[string]any
			if err := json.Unmarshal(t.InputSchema, &schema); err != nil || schema == nil {
				return fmt.Errorf("sdk: plugin %s: tool %q: input schema is not a JSON object", p.Name, t.Name)
			}
		}
	}
	for _, n := range p.Needs {
		if n != NeedIMAPCredentials && n != NeedToneProfile {
			return fmt.Errorf("sdk: plugin %s: unknown need %q", p.Name, n)
		}
	}
	return nil
}

// schema returns the tool's input schema, defaulting to an object.
func (t Tool) schema() json.RawMessage {
	if len(t.InputSchema) == 0 {
		return json.RawMessage(`{"type":"object"}`)
	}
	return t.InputSchema
}

// run calls the handler, turning a panic into an error so that one bad call
// does not take the plugin (and every other user's calls) down, and checks
// that the content is JSON.
func (t Tool) run(ctx context.Context, call Call) (res Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = Result{}, fmt.Errorf("sdk: tool %q panicked: %v", t.Name, r)
		}
	}()
	res, err = t.Handler(ctx, call)
	if err != nil {
		return Result{}, err
	}
	if len(bytes.TrimSpace(res.Content)) == 0 {
		res.Content = json.RawMessage("null")
	} else if !json.Valid(res.Content) {
		return Result{}, fmt.Errorf("sdk: tool %q returned content that is not JSON (use sdk.Text for plain text)", t.Name)
	}
	return res, nil
}
