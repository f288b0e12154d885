package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/worker"
)

func TestCoalesceFlag(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		lanes []string
		want  worker.CoalesceLanes
	}{
		{nil, worker.CoalesceLanes{}},
		{[]string{"live"}, worker.CoalesceLanes{Live: true}},
		{[]string{"backfill"}, worker.CoalesceLanes{Backfill: true}},
		{[]string{"live", "backfill"}, worker.CoalesceLanes{Live: true, Backfill: true}},
	} {
		t.Run("--coalesce "+strings.Join(c.lanes, ",")+" names its lanes", func(t *testing.T) {
			got, err := (&coalesceFlags{Coalesce: c.lanes}).coalesceLanes()
			if err != nil || got != c.want {
				t.Errorf("lanes %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
	t.Run("an unknown lane stops run with a usage error naming coalesce", func(t *testing.T) {
		_, _, err := runArgs(t, map[string]string{"KUSTOMER_API_KEY": "k", "WORKER_COALESCE": "live,bulk"}, "run", "--http-addr", "")
		var ue *usageError
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), `coalesce: "bulk" is not a lane`) {
			t.Fatalf("err = %v; want a usage error for coalesce", err)
		}
	})
	t.Run("help shows --coalesce and its variable", func(t *testing.T) {
		out, _, err := runArgs(t, nil, "run", "--help")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"--coalesce=LANES", "WORKER_COALESCE"} {
			if !strings.Contains(out, want) {
				t.Errorf("help lacks %q", want)
			}
		}
	})
}
