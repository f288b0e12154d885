package kustomertest

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// maxAssigned is Kustomer's limit on assignedUsers and assignedTeams.
const maxAssigned = 10

// validateBody checks the fields of an update body whose type or range Kustomer documents,
// and returns one message per problem, in field order. Unknown fields pass, and null
// clears a field.
func validateBody(body map[string]any) []string {
	keys := make([]string, 0, len(body))
	for k := range body {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var problems []string
	for _, k := range keys {
		if p := checkField(k, body[k]); p != "" {
			problems = append(problems, k+": "+p)
		}
	}
	return problems
}

func checkField(name string, v any) string {
	if name == "customer" {
		if s, ok := v.(string); ok && validID(s) {
			return ""
		}
		return fmt.Sprintf("%s is not a customer id (24 lowercase hex characters)", show(v))
	}
	if v == nil {
		return ""
	}
	switch name {
	case "externalId", "name", "replyChannel", "subStatus", "endedAt", "endedReason", "endedBy", "defaultLang":
		return wantString(v)
	case "direction":
		return wantEnum(v, "in", "out")
	case "status":
		return wantEnum(v, "open", "snoozed", "done")
	case "endedByType":
		return wantEnum(v, "user", "customer")
	case "priority":
		if f, ok := v.(float64); ok && f == math.Trunc(f) && f >= 1 && f <= 5 {
			return ""
		}
		return fmt.Sprintf("%s is not an integer from 1 to 5", show(v))
	case "satisfaction", "rev":
		if _, ok := v.(float64); !ok {
			return fmt.Sprintf("%s is not a number", show(v))
		}
	case "deleted", "ended", "locked":
		if _, ok := v.(bool); !ok {
			return fmt.Sprintf("%s is not a boolean", show(v))
		}
	case "tags":
		return wantStrings(v, -1)
	case "assignedUsers", "assignedTeams":
		return wantStrings(v, maxAssigned)
	case "suggestedShortcuts", "suggestedTags":
		if _, ok := v.([]any); !ok {
			return fmt.Sprintf("%s is not an array", show(v))
		}
	case "satisfactionLevel", "snooze", "sentiment", "custom", "queue":
		if _, ok := v.(map[string]any); !ok {
			return fmt.Sprintf("%s is not an object", show(v))
		}
	}
	return ""
}

func wantString(v any) string {
	if _, ok := v.(string); !ok {
		return fmt.Sprintf("%s is not a string", show(v))
	}
	return ""
}

func wantEnum(v any, allowed ...string) string {
	if s, ok := v.(string); ok {
		for _, a := range allowed {
			if s == a {
				return ""
			}
		}
	}
	return fmt.Sprintf("%s is not one of %s", show(v), strings.Join(allowed, ", "))
}

// wantStrings checks for an array of strings of at most limit items (limit < 0: any).
func wantStrings(v any, limit int) string {
	arr, ok := v.([]any)
	if !ok {
		return fmt.Sprintf("%s is not an array of strings", show(v))
	}
	for _, x := range arr {
		if _, ok := x.(string); !ok {
			return fmt.Sprintf("item %s is not a string", show(x))
		}
	}
	if limit >= 0 && len(arr) > limit {
		return fmt.Sprintf("%d items, at most %d allowed", len(arr), limit)
	}
	return ""
}

// show renders a decoded JSON value for an error message, shortened.
func show(v any) string {
	var s string
	switch v := v.(type) {
	case nil:
		s = "null"
	case string:
		s = fmt.Sprintf("%q", v)
	case map[string]any:
		s = "an object"
	case []any:
		s = "an array"
	default:
		s = fmt.Sprint(v)
	}
	return logtext.Truncate(s, 60, "...")
}
