package kustomer

import (
	"math"
	"net/http"
	"testing"
	"time"
)

func TestParseRateLimit(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	absent := RateLimit{Limit: -1, Remaining: -1}
	tests := []struct {
		name string
		h    http.Header
		want RateLimit
	}{
		{"no headers", http.Header{}, absent},
		{"all headers", http.Header{
			"X-Ratelimit-Limit":     {"1000"},
			"X-Ratelimit-Remaining": {"0"},
			"X-Ratelimit-Reset":     {"1772600827"},
			"Retry-After":           {"20"},
		}, RateLimit{Limit: 1000, Remaining: 0, Reset: time.Unix(1772600827, 0).UTC(), RetryAfter: 20 * time.Second}},
		{"header names in any case", http.Header{
			"x-ratelimit-limit":     {"500"},
			"X-RATELIMIT-REMAINING": {"12"},
			"x-RateLimit-Reset":     {"30"},
			"retry-after":           {"4"},
		}, RateLimit{Limit: 500, Remaining: 12, Reset: now.Add(30 * time.Second), RetryAfter: 4 * time.Second}},
		{"reset above 1e9 is epoch seconds", http.Header{"X-Ratelimit-Reset": {"1772600845"}},
			RateLimit{Limit: -1, Remaining: -1, Reset: time.Unix(1772600845, 0).UTC()}},
		{"reset epoch with decimals", http.Header{"X-Ratelimit-Reset": {"1772600845.25"}},
			RateLimit{Limit: -1, Remaining: -1, Reset: time.Unix(1772600845, 250e6).UTC()}},
		{"reset up to 1e9 is seconds from now", http.Header{"X-Ratelimit-Reset": {"42"}},
			RateLimit{Limit: -1, Remaining: -1, Reset: now.Add(42 * time.Second)}},
		{"reset seconds from now with decimals", http.Header{"X-Ratelimit-Reset": {"0.5"}},
			RateLimit{Limit: -1, Remaining: -1, Reset: now.Add(500 * time.Millisecond)}},
		{"reset of 0 is now", http.Header{"X-Ratelimit-Reset": {"0"}},
			RateLimit{Limit: -1, Remaining: -1, Reset: now}},
		{"Retry-After HTTP date", http.Header{"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}},
			RateLimit{Limit: -1, Remaining: -1, RetryAfter: 90 * time.Second}},
		{"Retry-After RFC 850 date", http.Header{"Retry-After": {now.Add(5 * time.Second).Format(time.RFC850)}},
			RateLimit{Limit: -1, Remaining: -1, RetryAfter: 5 * time.Second}},
		{"Retry-After date in the past is zero", http.Header{"Retry-After": {now.Add(-time.Hour).Format(http.TimeFormat)}}, absent},
		{"Retry-After huge saturates instead of overflowing", http.Header{"Retry-After": {"99999999999999999999"}},
			RateLimit{Limit: -1, Remaining: -1, RetryAfter: math.MaxInt64}},
		{"surrounding spaces are ignored", http.Header{"X-Ratelimit-Limit": {" 300 "}}, RateLimit{Limit: 300, Remaining: -1}},
	}
	for _, bad := range []string{"", "abc", "-1", "1.5", "1e3", "0x10", "Inf", "NaN", "+5", "5 6", "1,000", "99999999999999999999999"} {
		tests = append(tests, struct {
			name string
			h    http.Header
			want RateLimit
		}{"malformed limit and remaining " + bad, http.Header{"X-Ratelimit-Limit": {bad}, "X-Ratelimit-Remaining": {bad}}, absent})
	}
	for _, bad := range []string{"", "soon", "-5", "1e3", "Inf", "NaN", "0x1p3", "1.2.3", ".", "+5"} {
		tests = append(tests, struct {
			name string
			h    http.Header
			want RateLimit
		}{"malformed reset and Retry-After " + bad, http.Header{"X-Ratelimit-Reset": {bad}, "Retry-After": {bad}}, absent})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseRateLimit(tt.h, now)
			if got.Limit != tt.want.Limit || got.Remaining != tt.want.Remaining || !got.Reset.Equal(tt.want.Reset) || got.RetryAfter != tt.want.RetryAfter {
				t.Errorf("ParseRateLimit = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestRateLimitUntilResetIsCappedAndNeverNegative(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		reset time.Time
		want  time.Duration
	}{
		{time.Time{}, 0},
		{now.Add(-time.Minute), 0},
		{now.Add(17 * time.Second), 17 * time.Second},
		{now.Add(MaxWait), MaxWait},
		{now.Add(time.Hour), MaxWait},
	}
	for _, tt := range tests {
		if got := (RateLimit{Reset: tt.reset}).untilReset(now); got != tt.want {
			t.Errorf("untilReset with reset %v = %v, want %v", tt.reset, got, tt.want)
		}
	}
}
