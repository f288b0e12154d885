package main

import (
	"strings"

	"github.com/kustomer-worker/kustomer-worker/worker"
)

// coalesceFlags are run's flags for merging queued updates of one conversation
// (worker.Config.Coalesce, package worker/coalesce).
type coalesceFlags struct {
	Coalesce []string `name:"coalesce" env:"WORKER_COALESCE" sep:"," placeholder:"LANES" help:"Lanes (live, backfill, or both: live,backfill) whose queued partial updates of one conversation go as one PUT, merged key by key, later values winning: fewer units for the same final state. Only where the final state is all that matters (state synchronisation): Kustomer workflows and webhooks then never see the intermediate states. Default none."`
}

// coalesceLanes reads --coalesce, naming the lane at fault.
func (f *coalesceFlags) coalesceLanes() (worker.CoalesceLanes, error) {
	var l worker.CoalesceLanes
	for _, lane := range f.Coalesce {
		switch strings.TrimSpace(lane) {
		case "live":
			l.Live = true
		case "backfill":
			l.Backfill = true
		case "":
		default:
			return l, usagef("coalesce: %q is not a lane (live, backfill)", lane)
		}
	}
	return l, nil
}
