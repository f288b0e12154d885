package kustomer

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// GetConversation reads a conversation from the fake over HTTP, and each refusal is told
// apart: a 403 is the read role's (ReadDenied), not the update's; an outage of writes leaves
// reads answered; an outage of reads or of everything fails them transiently.
func TestGetConversation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	setup := func(t *testing.T, cfg kustomertest.Config) (*kustomertest.Server, *Client) {
		srv := kustomertest.NewServer(t, cfg)
		return srv, newClient(t, srv.URL, func(o *Options) { o.Key = StaticKey(kustomertest.DefaultAPIKey) })
	}
	t.Run("a read answers the conversation's rev and spends a unit", func(t *testing.T) {
		t.Parallel()
		srv, c := setup(t, kustomertest.Config{})
		srv.Seed(convID(1), map[string]any{"name": "a", "rev": 4})
		res, err := c.GetConversation(ctx, convID(1))
		if err != nil || res.Status != http.StatusOK || res.Rev != 4 {
			t.Fatalf("GetConversation = %+v, %v; want 200 with rev 4", res, err)
		}
		if st := srv.Stats(); st.Reads != 1 || st.Units != 1 || st.Applied != 0 {
			t.Errorf("stats = reads %d, units %d, applied %d; want 1, 1, 0", st.Reads, st.Units, st.Applied)
		}
		if reqs := srv.RequestsFor(convID(1)); len(reqs) != 1 || reqs[0].Method != http.MethodGet || reqs[0].Kind != kustomertest.KindRead {
			t.Errorf("requests = %+v; want one GET of kind read", reqs)
		}
	})
	t.Run("a malformed id is refused without a request", func(t *testing.T) {
		t.Parallel()
		srv, c := setup(t, kustomertest.Config{})
		if _, err := c.GetConversation(ctx, "nope"); !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v; want ErrInvalid", err)
		}
		if n := srv.Stats().Requests; n != 0 {
			t.Errorf("%d requests; want none", n)
		}
	})
	t.Run("an unknown conversation is a permanent 404", func(t *testing.T) {
		t.Parallel()
		_, c := setup(t, kustomertest.Config{RequireSeeded: true})
		_, err := c.GetConversation(ctx, convID(2))
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound || apiErr.Class != ClassPermanent || apiErr.Op != OpRead {
			t.Errorf("err = %v; want a permanent 404 of OpRead", err)
		}
	})
	t.Run("a key without the read role gets a 403 that is the read's alone", func(t *testing.T) {
		t.Parallel()
		_, c := setup(t, kustomertest.Config{ReadForbidden: true})
		_, err := c.GetConversation(ctx, convID(3))
		var apiErr *APIError
		if !errors.As(err, &apiErr) || !apiErr.ReadDenied() {
			t.Fatalf("err = %v; want ReadDenied", err)
		}
		if _, err := c.UpdateConversation(ctx, Update{ID: convID(3), Body: []byte(`{"name":"x"}`)}); err != nil {
			t.Errorf("update with the read role missing: %v; want it applied", err)
		}
	})
	t.Run("writes down leave reads answered; reads down leave writes applied", func(t *testing.T) {
		t.Parallel()
		srv, c := setup(t, kustomertest.Config{})
		srv.SetWritesDown(503)
		if _, err := c.UpdateConversation(ctx, Update{ID: convID(4), Body: []byte(`{"name":"x"}`)}); !errors.Is(err, ErrTransient) {
			t.Errorf("update while writes are down: %v; want transient", err)
		}
		if _, err := c.GetConversation(ctx, convID(4)); err != nil {
			t.Errorf("read while writes are down: %v; want an answer", err)
		}
		srv.SetWritesDown(0)
		srv.SetReadsDown(503)
		if _, err := c.GetConversation(ctx, convID(4)); !errors.Is(err, ErrTransient) {
			t.Errorf("read while reads are down: %v; want transient", err)
		}
		if _, err := c.UpdateConversation(ctx, Update{ID: convID(4), Body: []byte(`{"name":"x"}`)}); err != nil {
			t.Errorf("update while reads are down: %v; want it applied", err)
		}
	})
	t.Run("a rejected conversation's reads are refused only with RejectReads", func(t *testing.T) {
		t.Parallel()
		for _, rejectReads := range []bool{false, true} {
			srv, c := setup(t, kustomertest.Config{RejectReads: rejectReads})
			srv.Reject(convID(5), 503)
			_, err := c.GetConversation(ctx, convID(5))
			if got := errors.Is(err, ErrTransient); got != rejectReads {
				t.Errorf("RejectReads %v: read err = %v", rejectReads, err)
			}
		}
	})
	t.Run("during an outage reads fail too", func(t *testing.T) {
		t.Parallel()
		srv, c := setup(t, kustomertest.Config{})
		srv.SetDown(503)
		if _, err := c.GetConversation(ctx, convID(6)); !errors.Is(err, ErrTransient) {
			t.Errorf("read during an outage: %v; want transient", err)
		}
	})
}
