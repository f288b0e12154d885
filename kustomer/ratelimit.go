package kustomer

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is what an answer's headers say about the org-wide rate budget. Kustomer sends the
// x-ratelimit-* headers on most answers; whether it sends Retry-After is unconfirmed.
type RateLimit struct {
	Limit      int           // x-ratelimit-limit; -1 when absent
	Remaining  int           // x-ratelimit-remaining; -1 when absent
	Reset      time.Time     // x-ratelimit-reset as an absolute time; zero when absent
	RetryAfter time.Duration // Retry-After; 0 when absent
	// Lost counts earlier attempts of the request that got no answer: the HTTP transport
	// writes a request again on a new connection when a reused one dropped first (reads
	// only). Each may or may not have spent a unit of the org budget.
	Lost int
}

// epochThreshold separates the two readings of x-ratelimit-reset: above it the value is UTC epoch
// seconds, otherwise seconds from now. Kustomer does not document the unit.
const epochThreshold = 1e9

// maxEpochSeconds is the end of year 9999; a later reset is treated as malformed.
const maxEpochSeconds = 253402300799

// ParseRateLimit reads the rate-limit headers of an answer received at now. Header names are
// matched case-insensitively. x-ratelimit-reset above 1e9 is read as UTC epoch seconds, otherwise
// as seconds (decimals allowed) from now. Retry-After is delta seconds or an HTTP date; a date in
// the past gives 0. Malformed values count as absent.
func ParseRateLimit(h http.Header, now time.Time) RateLimit {
	rl := RateLimit{Limit: -1, Remaining: -1}
	if n, ok := parseCount(header(h, "X-Ratelimit-Limit")); ok {
		rl.Limit = n
	}
	if n, ok := parseCount(header(h, "X-Ratelimit-Remaining")); ok {
		rl.Remaining = n
	}
	if secs, ok := parseSeconds(header(h, "X-Ratelimit-Reset")); ok {
		if secs > epochThreshold {
			if secs <= maxEpochSeconds {
				whole, frac := math.Modf(secs)
				rl.Reset = time.Unix(int64(whole), int64(frac*1e9)).UTC()
			}
		} else {
			rl.Reset = now.Add(secondsToDuration(secs))
		}
	}
	if v := header(h, "Retry-After"); v != "" {
		if secs, ok := parseSeconds(v); ok {
			rl.RetryAfter = secondsToDuration(secs)
		} else if t, err := http.ParseTime(v); err == nil {
			rl.RetryAfter = max(t.Sub(now), 0)
		}
	}
	return rl
}

// untilReset is how long from now until the budget resets: 0 when unknown or past, at most MaxWait.
func (r RateLimit) untilReset(now time.Time) time.Duration {
	if r.Reset.IsZero() {
		return 0
	}
	return min(max(r.Reset.Sub(now), 0), MaxWait)
}

// header returns the first value of the header named canonical, also when the map was built by
// hand with keys in another case.
func header(h http.Header, canonical string) string {
	if v, ok := h[canonical]; ok {
		if len(v) == 0 {
			return ""
		}
		return strings.TrimSpace(v[0])
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, canonical) {
			return strings.TrimSpace(v[0])
		}
	}
	return ""
}

// parseCount parses a header value of decimal digits.
func parseCount(v string) (int, bool) {
	if v == "" || strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// parseSeconds parses a non-negative, finite number of seconds, decimals allowed.
func parseSeconds(v string) (float64, bool) {
	if v == "" || !isDecimal(v) {
		return 0, false
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs < 0 || math.IsInf(secs, 0) || math.IsNaN(secs) {
		return 0, false
	}
	return secs, true
}

// isDecimal reports whether v is digits with at most one decimal point, which keeps ParseFloat
// from accepting "Inf", "0x1p3", "1e3" and the like.
func isDecimal(v string) bool {
	digits, points := 0, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			points++
		default:
			return false
		}
	}
	return digits > 0 && points <= 1
}

// secondsToDuration converts without overflowing: absurdly long waits saturate.
func secondsToDuration(secs float64) time.Duration {
	if secs >= float64(math.MaxInt64)/float64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(secs * float64(time.Second))
}
