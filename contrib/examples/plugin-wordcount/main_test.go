package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

func TestCountWords(t *testing.T) {
	h := sdktest.New(newPlugin(), sdk.User{UserID: "aaaaaaaa-0000-4000-8000-000000000001"}, nil)
	cases := []struct {
		name string
		args any
		want string
		err  bool
	}{
		{"empty", map[string]any{"text": ""}, `{"characters":0,"lines":0,"top":[],"words":0}`, false},
		{"counts", map[string]any{"text": "The cat and the hat.\nThe end", "top": 2},
			`{"characters":28,"lines":2,"top":[{"word":"the","count":3},{"word":"and","count":1}],"words":7}`, false},
		{"unknown field", map[string]any{"text": "x", "colour": "red"}, "", true},
		{"wrong type", map[string]any{"text": 3}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := h.Call(context.Background(), "count_words", tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if res.IsError != tc.err {
				t.Fatalf("IsError %v: %s", res.IsError, res.Content)
			}
			if !tc.err && string(res.Content) != tc.want {
				t.Errorf("got %s\nwant %s", res.Content, tc.want)
			}
		})
	}
}

func TestRememberRecall(t *testing.T) {
	host := &sdktest.FakeHost{}
	h := sdktest.New(newPlugin(), sdk.User{UserID: "aaaaaaaa-0000-4000-8000-000000000001"}, host)
	ctx := context.Background()
	if res, err := h.Call(ctx, "recall", map[string]string{"key": "lunch"}); err != nil || !res.IsError {
		t.Fatalf("recall before remember: %v %s", err, res.Content)
	}
	if res, err := h.Call(ctx, "remember", map[string]string{"key": "lunch", "value": "Thursday"}); err != nil || res.IsError {
		t.Fatalf("remember: %v %s", err, res.Content)
	}
	if host.KV["note:lunch"] != "Thursday" {
		t.Errorf("KV %v", host.KV)
	}
	res, err := h.Call(ctx, "recall", map[string]string{"key": "lunch"})
	var got string
	if err != nil || json.Unmarshal(res.Content, &got) != nil || got != "Thursday" {
		t.Errorf("recall: %v %s", err, res.Content)
	}
	if res, _ := h.Call(ctx, "remember", map[string]string{"key": "two words", "value": "x"}); !res.IsError {
		t.Error("a key with a space was accepted")
	}
}
