package worker

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// Wiring is what the daemon's pool takes besides NATS: how it reaches Kustomer, its budget,
// how it reports, and its settings.
type Wiring struct {
	Client   Updater      // sends the PUT
	Pacer    Budget       // paces every request
	Metrics  *Metrics     // optional
	Log      *slog.Logger // default: discard
	Config   Config
	HardStop context.Context                 // optional: see Pool.HardStop
	Heal     func(ctx context.Context) error // optional: see Pool.Heal
}

// NewPool makes the pool that `kustomer-worker run` runs, with every mechanism on: both lanes
// (lanes, as queue.BindLanes returns them, so that the replica the server pins on the live
// lane is the active one and takes both), the order check across them, dead letters in the
// topology's dead-letter stream, attempts kept in its bucket (attempts), and the recovery of
// the order of messages other processes hold (Outstanding). The benchmarks build their pool
// with it too, so that they measure what users run. It looks up the work stream once (ctx
// bounds that), unless lanes.Stream has it; bulk mode is wired on the result (BulkClient, BulkJobs).
func NewPool(ctx context.Context, js jetstream.JetStream, top queue.Topology, lanes queue.Consumers, attempts *queue.Attempts, w Wiring) (*Pool, error) {
	var order *queue.OrderCheck
	var err error
	if lanes.Stream != nil { // as BindLanes just read it: no second round trip
		order, err = queue.NewOrderCheckOn(lanes.Stream, top)
	} else {
		order, err = queue.NewOrderCheck(ctx, js, top)
	}
	if err != nil {
		return nil, err
	}
	// A standby's backfill pull waits no longer than a pull.
	lanes.Backfill.MaxWait = w.Config.WithDefaults().FetchWait
	return &Pool{
		Consumer:    lanes.Live,
		Backfill:    lanes.Backfill,
		Order:       order,
		Client:      w.Client,
		DeadLetters: &queue.DeadLetterPublisher{JS: js, Subject: top.DLQSubject},
		HardStop:    w.HardStop,
		Heal:        w.Heal,
		Outstanding: &queue.Outstanding{JS: js, Topology: top, Stream: lanes.Stream},
		Attempts:    attempts,
		Runs:        &queue.RunLog{JS: js, Topology: top},
		Pacer:       w.Pacer,
		Metrics:     w.Metrics,
		Log:         w.Log,
		Config:      w.Config,
	}, nil
}
