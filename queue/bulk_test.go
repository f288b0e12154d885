package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

func TestBulkJobs(t *testing.T) {
	js, top := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := queue.BindBulk(ctx, js, top, false)
	if err != nil {
		t.Fatalf("the bulk bucket Ensure made: %v", err)
	}
	if recs, err := store.List(ctx); err != nil || len(recs) != 0 {
		t.Fatalf("an empty bucket lists %v, %v; want nothing", recs, err)
	}
	t0 := time.Now().Add(-time.Minute).UTC()
	older := queue.BulkRecord{Key: "a", JobID: "job-a", Submitted: t0, Items: []queue.BulkRecordItem{
		{Conv: "5f3c9a1b2c3d4e5f60718293", Seq: 7, Stored: 42, Ref: "7-42", Outcome: queue.BulkSucceeded},
	}}
	newer := queue.BulkRecord{Key: "b", Submitted: t0.Add(time.Second), Ambiguous: t0.Add(2 * time.Second), FenceUntil: t0.Add(time.Hour)}
	for _, r := range []queue.BulkRecord{newer, older} {
		if err := store.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Key != "a" || recs[1].Key != "b" {
		t.Fatalf("listed %+v; want a, then b (oldest submit first)", recs)
	}
	if it := recs[0].Items[0]; it.MsgRef() != (queue.MsgRef{Seq: 7, Stored: 42}) || it.Outcome != queue.BulkSucceeded || recs[0].JobID != "job-a" {
		t.Errorf("record a came back as %+v", recs[0])
	}
	if !recs[1].FenceUntil.Equal(newer.FenceUntil) || !recs[1].Ambiguous.Equal(newer.Ambiguous) {
		t.Errorf("record b came back as %+v", recs[1])
	}
	if err := store.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "missing"); err != nil {
		t.Errorf("deleting a missing record: %v", err)
	}
	if recs, _ := store.List(ctx); len(recs) != 1 || recs[0].Key != "b" {
		t.Errorf("after deleting a: %+v", recs)
	}
	if err := store.Put(ctx, queue.BulkRecord{}); err == nil {
		t.Error("a record without a key was stored")
	}
}
