package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// runsCmd lists recent runs.
type runsCmd struct {
	natsFlags
	topologyFlags
	dialFlags

	Limit int  `name:"limit" default:"20" help:"Runs listed at most, newest first (default ${default})."`
	JSON  bool `name:"json" help:"Print one JSON object a run, as status --run --json does."`
}

func (c *runsCmd) Help() string {
	return `Lists the runs (backfills enqueued under a run id) the runs stream keeps (30 days), newest
first: id, when it started, its lines, applied, dead-lettered, pending, and its state
(publishing, running, done, dead-lettered: ended with dead letters). A run's summary at its end
(units, duration, the share applied in bulk jobs) is status --run ID.

Examples:
  kustomer-worker runs
  kustomer-worker runs --json | jq 'select(.state == "dead-lettered") | .id'`
}

func (c *runsCmd) Run(ctx context.Context, e *env, g *globals) error {
	if c.Limit < 1 {
		return usagef("limit: %d is below 1", c.Limit)
	}
	top := c.topology()
	if err := top.Validate(); err != nil {
		return settingError(err)
	}
	s, err := dial(ctx, e, g, &c.natsFlags, c.dialFlags, "kustomer-worker runs")
	if err != nil {
		return err
	}
	defer s.close()
	rctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
	defer cancel()
	log := &queue.RunLog{JS: s.js, Topology: top}
	runs, err := log.Runs(rctx)
	if err != nil {
		return err
	}
	if len(runs) > c.Limit {
		runs = runs[:c.Limit]
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	if !c.JSON {
		fmt.Fprintln(tw, "RUN\tSTARTED\tLINES\tAPPLIED\tDEAD-LETTERED\tPENDING\tSTATE")
	}
	for _, r := range runs {
		st, err := (&queue.RunReader{Log: log, ID: r.ID}).Read(rctx)
		if err != nil {
			return err
		}
		if c.JSON {
			if err := writeJSON(e.stdout, runJSON{RunStatus: st}); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", st.ID, st.Started.UTC().Format(time.RFC3339), st.Lines, st.Applied, st.Dead, st.Pending, st.State)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !c.JSON {
		fmt.Fprintln(e.stderr, plural(len(runs), "run"))
	}
	return nil
}
