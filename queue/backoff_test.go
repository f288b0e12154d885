package queue

import (
	"testing"
	"time"
)

func TestNthDelayDoublesUpToItsCeiling(t *testing.T) {
	t.Parallel()
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i, w := range want {
		if got := reconnectDelay(i + 1); got != w {
			t.Errorf("reconnectDelay(%d) = %s; want %s", i+1, got, w)
		}
	}
	if got := nthDelay(publishRetryInitial, publishRetryMax, 1000); got != publishRetryMax {
		t.Errorf("after 1000 attempts: %s; want the ceiling %s", got, publishRetryMax)
	}
	if got := nthDelay(publishRetryInitial, publishRetryMax, 0); got != publishRetryInitial {
		t.Errorf("before any attempt: %s; want %s", got, publishRetryInitial)
	}
}
