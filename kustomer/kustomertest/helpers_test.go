package kustomertest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// fixture is a fake server and a client for it.
type fixture struct {
	t      testing.TB
	srv    *kustomertest.Server
	client *http.Client
}

func setup(t testing.TB, cfg kustomertest.Config) *fixture {
	t.Helper()
	srv := kustomertest.NewServer(t, cfg)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &fixture{t: t, srv: srv, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// answer is what the client saw.
type answer struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (a answer) int(t testing.TB, header string) int {
	t.Helper()
	v := a.header.Get(header)
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("header %s = %q, want an integer", header, v)
	}
	return n
}

// put sends an update of conversation id with the default key.
func (f *fixture) put(id, body string) answer {
	f.t.Helper()
	return f.send(http.MethodPut, "/v1/conversations/"+id, body, kustomertest.DefaultAPIKey)
}

// send makes one request; key "" sends no Authorization header.
func (f *fixture) send(method, path, body, key string) answer {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return f.do(req)
}

func (f *fixture) do(req *http.Request) answer {
	resp, err := f.client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// mustStatus fails the test unless a has the status.
func mustStatus(t testing.TB, a answer, status int) {
	t.Helper()
	if a.err != nil {
		t.Fatalf("request failed: %v; want HTTP %d", a.err, status)
	}
	if a.status != status {
		t.Fatalf("HTTP %d %s; want %d", a.status, a.body, status)
	}
}

// id returns the n-th test conversation id.
func id(n int) string { return fmt.Sprintf("%024x", n) }

// eventually waits until cond holds, failing the test after 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, what, 5*time.Second, cond)
}

// errorItem is one item of either Kustomer error shape.
type errorItem struct {
	Status  string         `json:"status"`
	Code    string         `json:"code"`
	Title   string         `json:"title"`
	Detail  string         `json:"detail"`
	Message string         `json:"message"`
	Meta    map[string]any `json:"meta"`
}

func errorsOf(t testing.TB, a answer) []errorItem {
	t.Helper()
	var v struct {
		Errors []errorItem `json:"errors"`
	}
	if err := json.Unmarshal(a.body, &v); err != nil || len(v.Errors) == 0 {
		t.Fatalf("body %s is not a Kustomer error (%v)", a.body, err)
	}
	return v.Errors
}

// conversationDoc is the 200 answer of an update.
type conversationDoc struct {
	Data struct {
		Type          string         `json:"type"`
		ID            string         `json:"id"`
		Attributes    map[string]any `json:"attributes"`
		Relationships struct {
			Customer struct {
				Data struct{ Type, ID string } `json:"data"`
			} `json:"customer"`
		} `json:"relationships"`
	} `json:"data"`
}

func docOf(t testing.TB, a answer) conversationDoc {
	t.Helper()
	var d conversationDoc
	if err := json.Unmarshal(a.body, &d); err != nil {
		t.Fatalf("body %s: %v", a.body, err)
	}
	return d
}
