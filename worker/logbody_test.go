package worker_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

func TestTheLogNeverQuotesABodyValue(t *testing.T) {
	t.Parallel()
	// Each message fails validation on values a producer may have copied from a customer's
	// data; the log says which field and what is wrong, never the value. The dead letter keeps
	// the whole reason, values included (README: Dead letters).
	const secret = "s3cret-CUSTOMER-value"
	msgs := []struct{ body, field string }{
		{fmt.Sprintf(`{"status":%q}`, secret), "body.status"},
		{`{"priority":7777777}`, "body.priority"},
		{`{"tags":["ok",42424242]}`, "body.tags[1]"},
		{fmt.Sprintf(`{"assignedUsers":%q}`, secret), "body.assignedUsers"},
		{`{"name":s3cret}`, "message"}, // broken JSON: the syntax error quotes a character of it
	}
	var logs testwait.Buffer
	f := setup(t, options{before: func(p *worker.Pool) {
		p.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	for i, m := range msgs {
		f.publish(fmt.Sprintf(`{"id":%q,"body":%s}`, id(i), m.body))
	}
	testwait.Until(t, "every message dead-lettered", 30*time.Second, func() bool { return len(f.deadLetters()) == len(msgs) })
	f.stop()
	log := logs.String()
	for _, v := range []string{secret, "7777777", "42424242", `'s'`} {
		if strings.Contains(log, v) {
			t.Errorf("the log quotes the body value %s:\n%s", v, log)
		}
	}
	for _, m := range msgs {
		if !strings.Contains(log, m.field+":") {
			t.Errorf("the log does not name the field %s:\n%s", m.field, log)
		}
	}
	reasons := ""
	for _, d := range f.deadLetters() {
		reasons += d.header.Get("Dlq-Reason") + "\n"
	}
	if !strings.Contains(reasons, secret) || !strings.Contains(reasons, "7777777") {
		t.Errorf("the dead letters' reasons lack the values; want them whole there:\n%s", reasons)
	}
}
