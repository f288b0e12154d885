package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/producer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// exampleBroker starts what the examples publish to: an embedded NATS server (the one
// queuetest wraps for tests, and kustomer-worker run starts without --nats-url) with the
// worker's streams declared. stop closes the connection and removes the server's store.
func exampleBroker() (nc *nats.Conn, stop func()) {
	dir, err := os.MkdirTemp("", "producer-example-")
	if err != nil {
		panic(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	srv, err := queue.StartEmbedded(queue.EmbeddedConfig{Host: "127.0.0.1", Port: -1, DataDir: dir}, quiet)
	if err != nil {
		panic(err)
	}
	nc, err = queue.Connect(queue.ConnConfig{URL: srv.ClientURL()}, quiet)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.WaitConnected(ctx, nc); err != nil {
		panic(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	if err := queue.Ensure(ctx, js, queue.Topology{}.WithDefaults()); err != nil {
		panic(err)
	}
	return nc, func() {
		nc.Close()
		srv.Shutdown()
		os.RemoveAll(dir)
	}
}

// Publish one update and wait until JetStream stored it.
func Example() {
	nc, stop := exampleBroker()
	defer stop()
	ctx := context.Background()

	p, err := producer.New(nc, producer.Config{}) // the live lane: kustomer.conversations.update.<id>
	if err != nil {
		fmt.Println(err)
		return
	}
	update := kustomer.Update{
		ID:   "5f3c9a1b2c3d4e5f60718293",
		Body: json.RawMessage(`{"status": "done", "tags": ["vip"]}`),
	}
	// The event id is your id of the event this update reports: a retry of the same event
	// is stored once, and the same update sent for another event is applied again.
	receipt, err := p.Publish(ctx, "order-1234-shipped", update)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(receipt.Subject, receipt.Stream, receipt.Sequence)
	// Output:
	// kustomer.conversations.update.5f3c9a1b2c3d4e5f60718293 KUSTOMER_UPDATES 1
}

// A publish sent again with the same event id (after a timeout, say) is stored once; the same
// update for a new event is stored again, so open, done, open all apply.
func ExampleProducer_Publish_eventIDs() {
	nc, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	p, err := producer.New(nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	open := kustomer.Update{ID: "5f3c9a1b2c3d4e5f60718293", Body: json.RawMessage(`{"status": "open"}`)}
	done := kustomer.Update{ID: "5f3c9a1b2c3d4e5f60718293", Body: json.RawMessage(`{"status": "done"}`)}
	for _, send := range []struct {
		event  string
		update kustomer.Update
	}{
		{"ticket-7-reopened", open},
		{"ticket-7-reopened", open}, // the same event again
		{"ticket-7-solved", done},
		{"ticket-7-reopened-again", open},
	} {
		r, err := p.Publish(ctx, send.event, send.update)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%-24s sequence %d duplicate %v\n", send.event, r.Sequence, r.Duplicate)
	}
	// Output:
	// ticket-7-reopened        sequence 1 duplicate false
	// ticket-7-reopened        sequence 1 duplicate true
	// ticket-7-solved          sequence 2 duplicate false
	// ticket-7-reopened-again  sequence 3 duplicate false
}

// An invalid update is never sent; the error lists every problem with its field.
func ExampleProducer_PublishJSON_invalid() {
	nc, stop := exampleBroker()
	defer stop()
	p, err := producer.New(nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	msg := []byte(`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"priority": 7, "stauts": "done"}}`)
	_, err = p.PublishJSON(context.Background(), "order-1234-shipped", msg)
	fmt.Println(errors.Is(err, producer.ErrInvalid))
	var ve *kustomer.ValidationError
	if errors.As(err, &ve) {
		for _, problem := range ve.Problems {
			fmt.Println(problem)
		}
	}
	// Output:
	// true
	// body.priority: 7 is not an integer from 1 to 5
	// body.stauts: unknown field
}

// A burst: publish without waiting for each acknowledgement, then wait for all of them.
func ExampleBatch() {
	nc, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	p, err := producer.New(nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	batch, err := p.NewBatch(producer.BatchConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer batch.Close()
	for i := range 1000 {
		u := kustomer.Update{ID: fmt.Sprintf("%024x", i), Body: json.RawMessage(`{"status": "done"}`)}
		if err := batch.Publish(ctx, fmt.Sprintf("backfill-2025-01-31-%d", i), u); err != nil {
			fmt.Println(err) // an invalid update: nothing sent for it, the batch goes on
		}
	}
	if err := batch.Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("stored", batch.Stats().Published)
	// Output:
	// stored 1000
}

// A bulk load goes to the backfill lane: the worker applies it with the budget live updates
// leave, so it never delays them.
func ExampleConfig_backfill() {
	nc, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	p, err := producer.New(nc, producer.Config{Lane: producer.Backfill})
	if err != nil {
		fmt.Println(err)
		return
	}
	u := kustomer.Update{ID: "5f3c9a1b2c3d4e5f60718293", Body: json.RawMessage(`{"tags": ["q3-cleanup"]}`)}
	r, err := p.Publish(ctx, "cleanup-2025-q3-5f3c9a1b2c3d4e5f60718293", u)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Subject)
	// Output:
	// kustomer.conversations.backfill.5f3c9a1b2c3d4e5f60718293
}

// Validate a whole input first, publish only if all of it is valid: CheckJSON in the first
// pass, PublishChecked in the second, so that no message is decoded twice.
func ExampleBatch_PublishChecked() {
	nc, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	input := []string{
		`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"status": "done"}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718294", "body": {"status": "done"}}`,
	}
	type checked struct{ event, id string }
	var ok []checked
	for i, line := range input {
		event := fmt.Sprintf("import-42-line-%d", i+1)
		id, err := producer.CheckJSON(event, []byte(line))
		if err != nil {
			fmt.Println("nothing published:", err)
			return
		}
		ok = append(ok, checked{event, id})
	}
	p, err := producer.New(nc, producer.Config{Lane: producer.Backfill})
	if err != nil {
		fmt.Println(err)
		return
	}
	batch, err := p.NewBatch(producer.BatchConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer batch.Close()
	for i, c := range ok {
		if err := batch.PublishChecked(ctx, c.event, c.id, []byte(input[i])); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := batch.Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("stored", batch.Stats().Published)
	// Output:
	// stored 2
}
