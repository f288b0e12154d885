package queue

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Attempts remembers how many attempts a work message has spent, so the attempt limit holds
// across redeliveries, restarts and replicas. Only messages that failed are written; a message
// that succeeds at its first delivery costs no I/O here.
type Attempts struct {
	kv jetstream.KeyValue
}

// MsgRef names one message of a stream for as long as the stream lives and after: its
// sequence, and when it was stored (Unix nanoseconds). A stream that is deleted and created
// again starts its sequences again; the time tells its messages from the old ones of the
// same sequence. It is comparable, for use as a map key.
type MsgRef struct {
	Seq    uint64
	Stored int64
}

// NewMsgRef is the reference of the message stored at seq at time stored.
func NewMsgRef(seq uint64, stored time.Time) MsgRef {
	return MsgRef{Seq: seq, Stored: stored.UnixNano()}
}

// Key is the reference as a KV key.
func (r MsgRef) Key() string {
	return strconv.FormatUint(r.Seq, 10) + "-" + strconv.FormatInt(r.Stored, 10)
}

// Get returns the attempts recorded for the message, 0 if none.
func (a *Attempts) Get(ctx context.Context, ref MsgRef) (int, error) {
	e, err := a.kv.Get(ctx, ref.Key())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(string(e.Value()))
	if err != nil {
		return 0, nil // unreadable: start again rather than wedge the message
	}
	return n, nil
}

// Set records n attempts for the message.
func (a *Attempts) Set(ctx context.Context, ref MsgRef, n int) error {
	_, err := a.kv.Put(ctx, ref.Key(), []byte(strconv.Itoa(n)))
	return err
}

// Delete forgets the message, once it was acknowledged.
func (a *Attempts) Delete(ctx context.Context, ref MsgRef) error {
	err := a.kv.Purge(ctx, ref.Key())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}
