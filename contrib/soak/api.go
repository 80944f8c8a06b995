package main

// The daemon's HTTP API as the soak uses it: the admin and per-user calls
// that set the tenants up, the run listings the check reads, /metrics.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type apiClient struct {
	base string
	hc   *http.Client
}

func newAPI(base string, conns int) *apiClient {
	return &apiClient{base: base, hc: &http.Client{
		Timeout:   2 * time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: conns},
	}}
}

// do makes one call with the API key key ("" for none), expects status
// want and decodes the answer into out (when not nil). Errors name the
// call, never the key.
func (c *apiClient) do(ctx context.Context, key, method, path string, body, out any, want int) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("soak: %s %s: encode body: %w", method, path, err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return fmt.Errorf("soak: %s %s: %w", method, path, err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("soak: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("soak: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("soak: %s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, tailText(string(raw), 300))
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("soak: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// forEach runs fn(i) for i in [0, n) on workers goroutines; it stops
// handing out work at the first error and returns it.
func forEach(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// tenant is one inboxd user with its Dovecot account and workflow.
type tenant struct {
	imapUser   string
	id         string
	key        string
	workflowID string
}

// setupTenants creates n tenants: user (admin API), API key, IMAP settings
// and one active new_email workflow whose single step calls tool.
func setupTenants(ctx context.Context, c *apiClient, adminKey string, n, workers, imapPort int, tool string, toolArgs json.RawMessage) ([]tenant, error) {
	out := make([]tenant, n)
	err := forEach(ctx, n, workers, func(ctx context.Context, i int) error {
		t := tenant{imapUser: imapUser(i)}
		var user struct {
			ID string `json:"id"`
		}
		if err := c.do(ctx, adminKey, "POST", "/api/v1/users", map[string]any{"email": fmt.Sprintf("soak%d@soak.invalid", i)}, &user, http.StatusCreated); err != nil {
			return err
		}
		t.id = user.ID
		var key struct {
			APIKey string `json:"api_key"`
		}
		if err := c.do(ctx, adminKey, "POST", "/api/v1/users/"+t.id+"/api-keys", map[string]any{"name": "soak"}, &key, http.StatusCreated); err != nil {
			return err
		}
		t.key = key.APIKey
		settings := map[string]any{
			"imap_server": "127.0.0.1", "imap_port": imapPort, "imap_security": "none",
			"imap_username": t.imapUser, "imap_password": imapPassword,
		}
		if err := c.do(ctx, t.key, "PUT", "/api/v1/settings", settings, nil, http.StatusOK); err != nil {
			return err
		}
		wf := map[string]any{
			"name": "soak", "active": true, "trigger": map[string]any{"type": "new_email"},
			"steps": []any{map[string]any{"name": "call", "kind": "tool", "tool": tool, "arguments": toolArgs}},
		}
		var created struct {
			ID string `json:"id"`
		}
		if err := c.do(ctx, t.key, "POST", "/api/v1/workflows", wf, &created, http.StatusCreated); err != nil {
			return err
		}
		t.workflowID = created.ID
		out[i] = t
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("soak: set up tenants: %w", err)
	}
	return out, nil
}

// instance is one workflow run as the soak reads it.
type instance struct {
	ID         string    `json:"id"`
	Status     string    `json:"status"`
	Error      string    `json:"error"`
	Attempts   int       `json:"attempts"`
	CreatedAt  time.Time `json:"created_at"`
	FinishedAt time.Time `json:"finished_at"`
	Trigger    struct {
		Email *struct {
			Subject string `json:"subject"`
			UID     uint32 `json:"uid"`
		} `json:"email"`
	} `json:"trigger"`
}

// listLimit is the API's page limit for instances (workflow.MaxListLimit).
const listLimit = 1000

// listRuns lists every run of every tenant's workflow.
func listRuns(ctx context.Context, c *apiClient, tenants []tenant, workers int) ([][]instance, error) {
	out := make([][]instance, len(tenants))
	err := forEach(ctx, len(tenants), workers, func(ctx context.Context, i int) error {
		t := tenants[i]
		var list struct {
			Items []instance `json:"items"`
		}
		if err := c.do(ctx, t.key, "GET", "/api/v1/workflows/"+t.workflowID+"/instances?limit="+strconv.Itoa(listLimit), nil, &list, http.StatusOK); err != nil {
			return err
		}
		if len(list.Items) >= listLimit {
			return fmt.Errorf("soak: %s has %d runs or more: more than one page, which this check does not read (fewer mails per tenant: -rate, -duration or more -tenants)", t.imapUser, listLimit)
		}
		out[i] = list.Items
		return nil
	})
	return out, err
}

// metricSet is one scrape of /metrics: series ("name{labels}") -> value.
type metricSet map[string]float64

func (c *apiClient) metrics(ctx context.Context) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("soak: metrics: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("soak: metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("soak: metrics: status %d", resp.StatusCode)
	}
	m := metricSet{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// "name{labels} value" or "name value"; label values may hold spaces.
		cut := strings.LastIndexByte(line, '}') + 1
		if cut == 0 {
			cut = strings.IndexByte(line, ' ')
		}
		if cut <= 0 || cut >= len(line) {
			continue
		}
		f := strings.Fields(line[cut:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			m[line[:cut]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("soak: metrics: read: %w", err)
	}
	return m, nil
}

// sum adds up every series of the metric name.
func (m metricSet) sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// prefixed returns the series that start with prefix.
func (m metricSet) prefixed(prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}
