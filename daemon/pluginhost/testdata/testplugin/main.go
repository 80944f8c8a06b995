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
		{Name: "sleep", Description: "sleeps ms milliseconds", InputSchema: obj,
			Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
				var a struct{ Ms int }
				if err := call.Bind(&a); err != nil {
					return sdk.Errorf("%v", err), nil
				}
				select {
				case <-time.After(time.Duration(a.Ms) * time.Millisecond):
					return sdk.Text("slept"), nil
				case <-ctx.Done():
					return sdk.Result{}, ctx.Err()
				}
			}},
		{Name: "crash", Description: "exits the process", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				os.Exit(2)
				return sdk.Result{}, nil
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
