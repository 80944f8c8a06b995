// Command wordcount is an example third-party inboxd plugin, built against
// the public SDK (github.com/inboxd/inboxd/sdk) alone. It offers three
// tools, seen by agents as wordcount-count_words, wordcount-remember and
// wordcount-recall: a pure computation, and two that keep per-user notes
// through the host's key-value service.
//
// Build it into the plugin directory and restart inboxd:
//
//	go build -o "$PLUGINS_DIR/wordcount" ./contrib/examples/plugin-wordcount
package main

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/inboxd/inboxd/sdk"
)

func main() { sdk.Serve(newPlugin()) }

// version is set with -ldflags "-X main.version=...".
var version = "0.1.0"

func newPlugin() sdk.Plugin {
	return sdk.Plugin{
		Name:    "wordcount",
		Version: version,
		Tools: []sdk.Tool{
			{
				Name:        "count_words",
				Description: "Counts the words, lines and characters of a text and lists its most frequent words.",
				InputSchema: json.RawMessage(`{"type":"object","properties":{"text":{"type":"string","description":"the text to count"},"top":{"type":"integer","minimum":0,"maximum":50,"description":"how many frequent words to list (default 5)"}},"required":["text"],"additionalProperties":false}`),
				Handler:     countWords,
			},
			{
				Name:        "remember",
				Description: "Remembers a short note under a key, for this user only.",
				InputSchema: json.RawMessage(`{"type":"object","properties":{"key":{"type":"string"},"value":{"type":"string"}},"required":["key","value"],"additionalProperties":false}`),
				Handler:     remember,
			},
			{
				Name:        "recall",
				Description: "Returns the note remembered under a key.",
				InputSchema: json.RawMessage(`{"type":"object","properties":{"key":{"type":"string"}},"required":["key"],"additionalProperties":false}`),
				Handler:     recall,
			},
		},
	}
}

type wordCount struct {
	Word  string `json:"word"`
	Count int    `json:"count"`
}

func countWords(_ context.Context, call sdk.Call) (sdk.Result, error) {
	var args struct {
		Text string `json:"text"`
		Top  *int   `json:"top"`
	}
	if err := call.Bind(&args); err != nil {
		return sdk.Errorf("%v", err), nil
	}
	top := 5
	if args.Top != nil {
		top = min(max(*args.Top, 0), 50)
	}
	words := strings.FieldsFunc(args.Text, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '\'' })
	freq := map[string]int{}
	for _, w := range words {
		freq[strings.ToLower(w)]++
	}
	list := make([]wordCount, 0, len(freq))
	for w, n := range freq {
		list = append(list, wordCount{w, n})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].Count != list[j].Count {
			return list[i].Count > list[j].Count
		}
		return list[i].Word < list[j].Word
	})
	lines := 0
	if args.Text != "" {
		lines = strings.Count(strings.TrimRight(args.Text, "\n"), "\n") + 1
	}
	return sdk.JSON(map[string]any{
		"words":      len(words),
		"lines":      lines,
		"characters": utf8.RuneCountInString(args.Text),
		"top":        list[:min(top, len(list))],
	})
}

func remember(ctx context.Context, call sdk.Call) (sdk.Result, error) {
	var args struct{ Key, Value string }
	if err := call.Bind(&args); err != nil {
		return sdk.Errorf("%v", err), nil
	}
	if args.Key == "" || strings.ContainsFunc(args.Key, unicode.IsSpace) {
		return sdk.Errorf("key must be non-empty, without spaces"), nil
	}
	if err := sdk.HostFrom(ctx).KVSet(ctx, "note:"+args.Key, args.Value); err != nil {
		return sdk.Result{}, err
	}
	return sdk.Text("remembered " + args.Key), nil
}

func recall(ctx context.Context, call sdk.Call) (sdk.Result, error) {
	var args struct{ Key string }
	if err := call.Bind(&args); err != nil {
		return sdk.Errorf("%v", err), nil
	}
	v, ok, err := sdk.HostFrom(ctx).KVGet(ctx, "note:"+args.Key)
	if err != nil {
		return sdk.Result{}, err
	}
	if !ok {
		return sdk.Errorf("nothing remembered under %q", args.Key), nil
	}
	return sdk.Text(v), nil
}
