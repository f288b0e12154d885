package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestReadLeader(t *testing.T) {
	t.Parallel()
	t.Run("a request left unanswered (a leader election) is sent again without waiting out the caller's deadline", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		attempts := 0
		v, err := readLeader(ctx, func(actx context.Context) (int, error) {
			attempts++
			if dl, ok := actx.Deadline(); !ok || time.Until(dl) > leaderAttempt {
				t.Errorf("attempt %d may wait until %v; want at most %s", attempts, dl, leaderAttempt)
			}
			if attempts < 3 {
				<-actx.Done() // no leader: nobody answers
				return 0, actx.Err()
			}
			return 42, nil
		})
		if v != 42 || err != nil || attempts != 3 {
			t.Errorf("readLeader = %d, %v after %d attempts; want 42 after 3", v, err, attempts)
		}
	})
	t.Run("an answer that is an error ends it at once", func(t *testing.T) {
		t.Parallel()
		attempts := 0
		_, err := readLeader(context.Background(), func(context.Context) (int, error) {
			attempts++
			return 0, jetstream.ErrMsgNotFound
		})
		if !errors.Is(err, jetstream.ErrMsgNotFound) || attempts != 1 {
			t.Errorf("readLeader = %v after %d attempts; want ErrMsgNotFound after 1", err, attempts)
		}
	})
	t.Run("it ends with the caller's context", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
		defer cancel()
		attempts := 0
		done := make(chan error, 1)
		go func() {
			_, err := readLeader(ctx, func(actx context.Context) (int, error) {
				attempts++
				<-actx.Done()
				return 0, actx.Err()
			})
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() == nil || attempts < 2 {
				t.Errorf("readLeader = %v after %d attempts, caller's context %v; want the deadline's error, after 2 or more attempts, once the caller's context ended", err, attempts, ctx.Err())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("readLeader still running 7.5 s after the caller's context ended")
		}
	})
}
