package kustomertest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// A test of code that talks to Kustomer points it at the fake, scripts the failures it must
// survive, and asserts on what Kustomer would now hold and on what was sent.
func ExampleNewServer() {
	testSetPriority := func(t *testing.T) {
		srv := kustomertest.NewServer(t, kustomertest.Config{Budget: 100, ConversationLimit: 5})
		id := "5f1c2b3a4d5e6f7a8b9c0d1e"
		srv.Seed(id, map[string]any{"name": "Refund", "priority": 1})
		srv.Script(id, kustomertest.Status(503)) // Kustomer fails once, then recovers

		// The code under test, given srv.URL as base URL and "test-key" as API key.
		if err := setPriority(t.Context(), srv.URL, "test-key", id, 3); err != nil {
			t.Fatal(err)
		}

		if c, _ := srv.Conversation(id); c.Rev != 1 || c.Attributes["priority"] != 3.0 {
			t.Errorf("conversation %+v; want priority 3 after one applied update", c)
		}
		if reqs := srv.RequestsFor(id); len(reqs) != 2 || reqs[0].Status != 503 {
			t.Errorf("requests %+v; want a 503 and one retry", reqs)
		}
	}
	_ = testSetPriority // in a _test.go file: func TestSetPriority(t *testing.T) { ... }
}

// setPriority stands for the code under test: it updates a conversation's priority and
// retries once on a 5xx.
func setPriority(ctx context.Context, baseURL, apiKey, id string, priority int) error {
	var status int
	for range 2 {
		status = put(ctx, baseURL+"/v1/conversations/"+id, apiKey, fmt.Sprintf(`{"priority":%d}`, priority))
		if status < 500 {
			break
		}
	}
	if status != http.StatusOK {
		return fmt.Errorf("HTTP %d", status)
	}
	return nil
}

// The fake can run outside tests too, e.g. for a demo or a benchmark; Start picks the address.
func ExampleStart() {
	srv, err := kustomertest.Start("127.0.0.1:0", kustomertest.Config{Budget: 2})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	url := srv.URL + "/v1/conversations/5f1c2b3a4d5e6f7a8b9c0d1e"
	ctx := context.Background()
	fmt.Println(put(ctx, url, "wrong-key", `{"priority":3}`)) // refused: costs no budget
	fmt.Println(put(ctx, url, "test-key", `{"priority":3}`))
	fmt.Println(put(ctx, url, "test-key", `{"tags":["vip"]}`))
	fmt.Println(put(ctx, url, "test-key", `{"status":"done"}`)) // budget of 2 spent

	c, _ := srv.Conversation("5f1c2b3a4d5e6f7a8b9c0d1e")
	fmt.Println(c.Rev, c.Attributes)
	st := srv.Stats()
	fmt.Println(st.Requests, st.ByStatus)
	// Output:
	// 401
	// 200
	// 200
	// 429
	// 2 map[priority:3 tags:[vip]]
	// 4 map[200:2 401:1 429:1]
}

// put sends one update and returns the HTTP status, or 0 if no answer came.
func put(ctx context.Context, url, apiKey, body string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
