package queue

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// Attempts remembers how many attempts a work message has spent, so the attempt limit holds
// across redeliveries, restarts and replicas. Only messages that failed are written; a message
// that succeeds at its first delivery costs no I/O here.
type Attempts struct {
	kv jetstream.KeyValue
}

func key(seq uint64) string { return strconv.FormatUint(seq, 10) }

// Get returns the attempts recorded for the message with stream sequence seq, 0 if none.
func (a *Attempts) Get(ctx context.Context, seq uint64) (int, error) {
	e, err := a.kv.Get(ctx, key(seq))
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

// Set records n attempts for seq.
func (a *Attempts) Set(ctx context.Context, seq uint64, n int) error {
	_, err := a.kv.Put(ctx, key(seq), []byte(strconv.Itoa(n)))
	return err
}

// Delete forgets seq, once its message was acknowledged.
func (a *Attempts) Delete(ctx context.Context, seq uint64) error {
	err := a.kv.Purge(ctx, key(seq))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}
