// Command testplugin is the plugin the pluginhost tests run. Its behaviour
// depends on the name it is started under (the tests link it under several
// names): "rogue" is a hostile plugin speaking the raw protocol, anything
// else an ordinary SDK plugin of that name ("withcreds" declares needs).
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inboxd/inboxd/sdk"
)

func main() {
	name := filepath.Base(os.Args[0])
	if name == "rogue" {
		serveRogue()
		return
	}
	p := sdk.Plugin{Name: name, Version: "1.2.3", Tools: tools()}
	if name == "withcreds" {
		p.Needs = []sdk.Need{sdk.NeedIMAPCredentials, sdk.NeedToneProfile}
	}
	sdk.Serve(p)
}

func tools() []sdk.Tool {
	obj := []byte(`{"type":"object"}`)
	return []sdk.Tool{
		{Name: "echo", Description: "echoes text with the caller", InputSchema: []byte(`{"type":"object","properties":{"text":{"type":"string"}}}`),
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Text string }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				u, _ := sdk.UserFrom(ctx)
				return sdk.JSON(map[string]any{"text": a.Text, "user": u})
			}},
		{Name: "host_settings", Description: "returns the settings the host gives", InputSchema: obj,
			Handler: func(ctx context.Context, _ sdk.Call) (sdk.Result, error) {
				s, err := sdk.HostFrom(ctx).Settings(ctx)
				if err != nil {
					return sdk.Result{}, err
				}
				return sdk.JSON(s)
			}},
		{Name: "kv_roundtrip", Description: "sets a key, reads it back", InputSchema: obj,
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Key, Value string }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				h := sdk.HostFrom(ctx)
				if err := h.KVSet(ctx, a.Key, a.Value); err != nil {
					return sdk.Result{}, err
				}
				v, ok, err := h.KVGet(ctx, a.Key)
				if err != nil {
					return sdk.Result{}, err
				}
				return sdk.JSON(map[string]any{"value": v, "found": ok})
			}},
		{Name: "kv_get", Description: "reads a key", InputSchema: obj,
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Key string }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				v, ok, err := sdk.HostFrom(ctx).KVGet(ctx, a.Key)
				if err != nil {
					return sdk.Result{}, err
				}
				return sdk.JSON(map[string]any{"value": v, "found": ok})
			}},
		{Name: "tone", Description: "reads the tone profile", InputSchema: obj,
			Handler: func(ctx context.Context, _ sdk.Call) (sdk.Result, error) {
				t, err := sdk.HostFrom(ctx).ToneProfile(ctx)
				if err != nil {
					return sdk.Result{}, err
				}
				return sdk.JSON(t)
			}},
		{Name: "sleep", Description: "sleeps ms milliseconds; should the call end first, writes why to the report file, if named", InputSchema: obj,
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct {
					Ms     int
					Report string
				}
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				select {
				case <-time.After(time.Duration(a.Ms) * time.Millisecond):
					return sdk.Text("slept"), nil
				case <-ctx.Done():
					if a.Report != "" {
						_ = os.WriteFile(a.Report, []byte(ctx.Err().Error()), 0o600)
					}
					return sdk.Result{}, ctx.Err()
				}
			}},
		{Name: "vector_upsert", Description: "upserts docs (and generated ones), then counts and searches the collection", InputSchema: obj,
			Handler: vectorUpsert},
		{Name: "block", Description: "blocks until the call ends or the process is killed; with a release text, answers it at once", InputSchema: obj,
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Release string }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				if a.Release != "" {
					return sdk.Text("released: " + a.Release), nil
				}
				// The tests wait for this line (stderr goes to the host's
				// log) to know the call is in flight.
				u, _ := sdk.UserFrom(ctx)
				log.Printf("block: call of instance %s in flight", u.InstanceID)
				<-ctx.Done()
				return sdk.Result{}, ctx.Err()
			}},
		{Name: "crash", Description: "exits the process", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				os.Exit(2)
				return sdk.Result{}, nil
			}},
		{Name: "crash_while", Description: "exits the process while the file named by its file argument exists, else answers", InputSchema: obj,
			Handler: func(_ context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ File string }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				if _, err := os.Stat(a.File); err == nil {
					os.Exit(3)
				}
				return sdk.Text("alive"), nil
			}},
		{Name: "fail", Description: "returns an error", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				return sdk.Result{}, fmt.Errorf("deliberate failure")
			}},
		{Name: "panic", Description: "panics", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				panic("deliberate panic")
			}},
		{Name: "tool_error", Description: "answers with IsError", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				return sdk.Errorf("no such message %q", "x"), nil
			}},
		{Name: "print", Description: "writes to stdout and stderr", InputSchema: obj,
			Handler: func(_ context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Text string }
				_ = call.Bind(&a)
				fmt.Println("stdout: " + a.Text)
				log.Print("stderr: " + a.Text)
				return sdk.Text("printed"), nil
			}},
	}
}

// vectorUpsert upserts the given docs plus Generate.N generated ones of
// Generate.TextBytes bytes of text each (to reach the limits without
// sending megabytes of arguments), then answers the collection's count and
// the hits of Query.
func vectorUpsert(ctx context.Context, call sdk.Call) (sdk.Result, error) {
	var a struct {
		Docs     []sdk.VectorDoc
		Generate struct{ N, TextBytes int }
		Query    string
	}
	if err := call.Bind(&a); err != nil {
		return sdk.Errorf("%v", err), nil
	}
	for i := range a.Generate.N {
		a.Docs = append(a.Docs, sdk.VectorDoc{ThreadID: fmt.Sprintf("generated-%d", i), Text: strings.Repeat("x", max(a.Generate.TextBytes, 1))})
	}
	h := sdk.HostFrom(ctx)
	if len(a.Docs) > 0 {
		if err := h.VectorUpsert(ctx, a.Docs); err != nil {
			return sdk.Result{}, err
		}
	}
	n, err := h.VectorCount(ctx)
	if err != nil {
		return sdk.Result{}, err
	}
	out := map[string]any{"count": n, "hits": []sdk.VectorHit{}}
	if a.Query != "" {
		hits, err := h.VectorSearch(ctx, a.Query, 10, nil)
		if err != nil {
			return sdk.Result{}, err
		}
		out["hits"] = hits
	}
	return sdk.JSON(out)
}
