package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultBulkBucket is the KV bucket that keeps the worker's bulk jobs in flight.
const DefaultBulkBucket = "KUSTOMER_WORKER_BULK"

// bulkTTL bounds how long a job's record outlives its process: far beyond any job deadline,
// so that only records nobody will ever read again expire.
const bulkTTL = 7 * 24 * time.Hour

// BulkRecord is one bulk job the worker submitted (or is submitting) to Kustomer, with the
// work messages it carries, so that a process that starts after the one that submitted it
// reads the job's result instead of sending its updates again.
type BulkRecord struct {
	Key       string    `json:"-"`               // the record's key in the bucket; set by Put's caller
	JobID     string    `json:"jobId,omitempty"` // Kustomer's job id; "" while the submit is unanswered
	Lane      string    `json:"lane,omitempty"`  // the lane whose updates it carries ("live", "backfill")
	Submitted time.Time `json:"submitted"`       // when the (first) submit went out
	// Ambiguous is when a submit of these items got no usable answer (a timeout, a dropped
	// connection, an unreadable 2xx): a job Kustomer may run all the same, whose id nobody
	// knows. Zero when every submit was answered.
	Ambiguous time.Time `json:"ambiguous,omitzero"`
	// Settled is when the worker stopped waiting for the job: complete, or given up on.
	Settled time.Time `json:"settled,omitzero"`
	// FenceUntil: until then no newer update of the items' conversations may be sent, as the
	// job (or an unanswered submit) may still apply an item late. Zero when no such risk.
	FenceUntil time.Time        `json:"fenceUntil,omitzero"`
	Items      []BulkRecordItem `json:"items"`
}

// BulkRecordItem is one item of a bulk job: the work message and, once known, its outcome.
type BulkRecordItem struct {
	Conv    string `json:"conv"`              // the conversation id
	Seq     uint64 `json:"seq"`               // the message's stream sequence
	Stored  int64  `json:"stored"`            // when the message was stored, Unix nanoseconds
	Ref     string `json:"ref"`               // the item's _clientRef
	Outcome string `json:"outcome,omitempty"` // "", BulkSucceeded or BulkFailed
	Reason  string `json:"reason,omitempty"`  // for BulkFailed
	Run     string `json:"run,omitempty"`     // the run of the message (HeaderRunID), if any
	// Members are the messages merged into this item behind it (--coalesce), in stream
	// order: the item's outcome is each one's, and a redelivery of any of them is settled by
	// it. Empty for an item of one message.
	Members []BulkRecordMember `json:"members,omitempty"`
}

// BulkRecordMember is one message merged into a bulk item behind the item's own message.
type BulkRecordMember struct {
	Conv   string `json:"conv"`          // the conversation id, the item's
	Seq    uint64 `json:"seq"`           // the message's stream sequence
	Stored int64  `json:"stored"`        // when the message was stored, Unix nanoseconds
	Run    string `json:"run,omitempty"` // the run of the message (HeaderRunID), if any
}

// MsgRef is the member's message.
func (m BulkRecordMember) MsgRef() MsgRef { return MsgRef{Seq: m.Seq, Stored: m.Stored} }

// MsgRefs are the messages the item carries: its own, then its members'.
func (i BulkRecordItem) MsgRefs() []MsgRef {
	refs := make([]MsgRef, 0, 1+len(i.Members))
	refs = append(refs, i.MsgRef())
	for _, m := range i.Members {
		refs = append(refs, m.MsgRef())
	}
	return refs
}

// LastSeq is the highest stream sequence the item carries: its own, or its last member's.
// A fence of the item's conversation stands there.
func (i BulkRecordItem) LastSeq() uint64 {
	seq := i.Seq
	for _, m := range i.Members {
		seq = max(seq, m.Seq)
	}
	return seq
}

// Outcomes of a bulk item, as BulkRecordItem.Outcome.
const (
	BulkSucceeded = "succeeded"
	BulkFailed    = "failed"
)

// MsgRef is the item's message.
func (i BulkRecordItem) MsgRef() MsgRef { return MsgRef{Seq: i.Seq, Stored: i.Stored} }

// BulkJobs stores the worker's bulk jobs in flight in a JetStream KV bucket, one key per job.
type BulkJobs struct {
	kv jetstream.KeyValue
}

func (t Topology) bulkConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      t.BulkBucket,
		Description: "kustomer-worker bulk jobs in flight and their items, so that a restarted worker reads a job's result instead of re-sending",
		TTL:         bulkTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    t.StreamReplicas,
	}
}

// BindBulk opens the bulk bucket. With create, it creates the bucket when missing (Ensure
// does too); without, a missing bucket is an error matching jetstream.ErrBucketNotFound.
func BindBulk(ctx context.Context, js jetstream.JetStream, t Topology, create bool) (*BulkJobs, error) {
	t = t.WithDefaults()
	var (
		kv  jetstream.KeyValue
		err error
	)
	if create {
		kv, err = js.CreateOrUpdateKeyValue(ctx, t.bulkConfig())
	} else {
		kv, err = js.KeyValue(ctx, t.BulkBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", t.BulkBucket, err)
	}
	return &BulkJobs{kv: kv}, nil
}

// Put stores r under r.Key, replacing what was there.
func (b *BulkJobs) Put(ctx context.Context, r BulkRecord) error {
	if r.Key == "" {
		return errors.New("queue: bulk record without a key")
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = b.kv.Put(ctx, r.Key, data)
	return err
}

// Delete forgets the record key; a missing one is no error.
func (b *BulkJobs) Delete(ctx context.Context, key string) error {
	err := b.kv.Purge(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

// List returns every record, oldest submit first. Unreadable records are skipped.
func (b *BulkJobs) List(ctx context.Context) ([]BulkRecord, error) {
	lister, err := b.kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	out := make([]BulkRecord, 0, len(keys))
	for _, k := range keys {
		e, err := b.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var r BulkRecord
		if json.Unmarshal(e.Value(), &r) != nil {
			continue
		}
		r.Key = k
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b BulkRecord) int { return a.Submitted.Compare(b.Submitted) })
	return out, nil
}
