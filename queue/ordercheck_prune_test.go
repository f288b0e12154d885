package queue_test

import (
	"context"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// One bare message held for long (a conversation failing, say) does not keep the index from
// forgetting the thousands applied after it: it stays as large as what is pending, not as
// the traffic since.
func TestBareIndexForgetsPastALongHeldMessage(t *testing.T) {
	t.Parallel()
	js, top := setup(t)
	ctx := context.Background()
	oc, err := queue.NewOrderCheck(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, top.Stream)
	if err != nil {
		t.Fatal(err)
	}
	held := pub(t, js, top.BackfillSubject, `{"id":"held","body":{}}`)
	for round := range 4 {
		var seqs []uint64
		for i := range 1000 {
			seqs = append(seqs, pub(t, js, top.BackfillSubject, `{"id":"c`+string(rune('a'+i%20))+`","body":{}}`))
		}
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "held"), "l")
		older, err := oc.OlderPending(ctx, queue.LaneBackfill, "held", live)
		if err != nil || len(older) != 1 || older[0].Subject() != top.BackfillSubject {
			t.Fatalf("round %d: OlderPending found %d (%v); want the held message %d", round, len(older), err, held)
		}
		for _, seq := range seqs { // applied, as the backfill consumer would, all but the held one
			if err := stream.DeleteMsg(ctx, seq); err != nil {
				t.Fatal(err)
			}
		}
		if err := stream.DeleteMsg(ctx, live); err != nil {
			t.Fatal(err)
		}
	}
	if _, n := queue.BareIndexState(oc, queue.LaneBackfill); n > 2100 {
		t.Errorf("the index remembers %d bare messages after 4000 were applied behind one held; want it pruned past the held one (at most ~2000)", n)
	}
}
