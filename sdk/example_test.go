package sdk_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

// A whole plugin: one tool that greets the calling user and counts the
// greetings in the user's own key-value store. A real plugin's main is
// sdk.Serve(greeter()); here sdktest runs it in-process.
func Example() {
	greeter := func() sdk.Plugin {
		return sdk.Plugin{
			Name:    "greeter",
			Version: "1.0.0",
			Tools: []sdk.Tool{{
				Name:        "greet",
				Description: "Greets someone by name.",
				InputSchema: []byte(`{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}`),
				Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
					var args struct {
						Name string `json:"name"`
					}
					if err := call.Bind(&args); err != nil {
						return sdk.Errorf("%v", err), nil // the model reads this and can retry
					}
					host := sdk.HostFrom(ctx) // scoped to the calling user
					n, _, err := host.KVGet(ctx, "greetings")
					if err != nil {
						return sdk.Result{}, err
					}
					n += "+"
					if err := host.KVSet(ctx, "greetings", n); err != nil {
						return sdk.Result{}, err
					}
					user, _ := sdk.UserFrom(ctx)
					return sdk.Text(fmt.Sprintf("Hello, %s! (greeting %d in step %s)", args.Name, strings.Count(n, "+"), user.StepID)), nil
				},
			}},
		}
	}

	host := &sdktest.FakeHost{}
	h := sdktest.New(greeter(), sdk.User{UserID: "aaaaaaaa-0000-4000-8000-000000000001", StepID: "reply"}, host)
	for range 2 {
		res, err := h.Call(context.Background(), "greet", map[string]string{"name": "Ada"})
		fmt.Println(string(res.Content), err)
	}
	res, _ := h.Call(context.Background(), "greet", map[string]any{"name": 42})
	fmt.Println(res.IsError, string(res.Content))
	// Output:
	// "Hello, Ada! (greeting 1 in step reply)" <nil>
	// "Hello, Ada! (greeting 2 in step reply)" <nil>
	// true "sdk: bad arguments: field \"name\" must be string, got number"
}
