package kustomertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Answer is one scripted answer for [Server.Script] and [Server.ScriptAny]. A scripted answer
// replaces the fault draw of the request it answers; authentication and rate limits are
// checked before it, and it consumes budget like any answered request.
type Answer struct {
	// Status, when set, is sent without applying the update, with a Kustomer-shaped body
	// for that status (for a 2xx, the conversation as it stands). 0 means the request is
	// handled normally.
	Status int
	// Drop closes the connection without an answer (after Delay); the update is not applied.
	Drop bool
	// Delay holds the answer back. With Status 0 the update is applied at once and only
	// the answer is late, as when a server finishes the work but answers after the
	// client's timeout. The wait ends early when the client goes away.
	Delay time.Duration
	// Body, when set, replaces the body of whatever answer is sent.
	Body string
	// Done, with a Status that is not a 2xx, does the work before answering Status: the
	// update is applied, the bulk job made, as when a proxy answers 502 or 504 after
	// Kustomer finished. Kustomer's docs do not say whether a 5xx can come after the work
	// was done; a client must read every 5xx both ways.
	Done bool
}

// StatusAfterWork is an answer with the given HTTP status sent after the work was done (the
// update applied, the bulk job made): see Answer.Done.
func StatusAfterWork(code int) Answer { return Answer{Status: code, Done: true} }

// Status is an answer with the given HTTP status and Kustomer's error body for it; the
// update is not applied.
func Status(code int) Answer { return Answer{Status: code} }

// Drop is an answer that closes the connection without answering; the update is not applied.
func Drop() Answer { return Answer{Drop: true} }

// Slow is a normal answer (the update is applied) sent only after d.
func Slow(d time.Duration) Answer { return Answer{Delay: d} }

func (a Answer) String() string {
	switch {
	case a.Drop:
		return fmt.Sprintf("drop after %v", a.Delay)
	case a.Status != 0 && a.Done:
		return fmt.Sprintf("status %d after the work, after %v", a.Status, a.Delay)
	case a.Status != 0:
		return fmt.Sprintf("status %d after %v", a.Status, a.Delay)
	}
	return fmt.Sprintf("normal after %v", a.Delay)
}

const (
	contentJSON = "application/json; charset=utf-8"
	contentHTML = "text/html; charset=utf-8"
)

// errorBody is Kustomer's usual error shape: {"errors":[{"code","message","meta"}]}.
func errorBody(code string, messages ...string) []byte {
	type item struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Meta    map[string]any `json:"meta"`
	}
	items := make([]item, 0, len(messages))
	for _, m := range messages {
		items = append(items, item{Code: code, Message: m, Meta: map[string]any{}})
	}
	return mustJSON(map[string]any{"errors": items})
}

// jsonAPIErrorBody is the JSON:API error shape some Kustomer endpoints use:
// {"errors":[{"status","code","title","detail"}]}.
func jsonAPIErrorBody(status int, code, detail string) []byte {
	item := map[string]any{
		"status": strconv.Itoa(status),
		"code":   code,
		"title":  http.StatusText(status),
	}
	if detail != "" {
		item["detail"] = detail
	}
	return mustJSON(map[string]any{"errors": []any{item}})
}

// statusBody is the body Kustomer, or the load balancer in front of it, would send with an
// error status that has no more specific reason.
func statusBody(status int) (body []byte, contentType string) {
	switch status {
	case http.StatusBadRequest:
		return errorBody("bad_request", "Bad Request"), contentJSON
	case http.StatusUnauthorized:
		return errorBody("unauthorized", "Unauthorized: the API key is missing, invalid or expired"), contentJSON
	case http.StatusForbidden:
		return errorBody("forbidden", "Forbidden: the API key lacks org.permission.conversation.update"), contentJSON
	case http.StatusNotFound:
		return jsonAPIErrorBody(status, "not_found", "conversation not found"), contentJSON
	case http.StatusTooManyRequests:
		return errorBody("too_many_requests", "Too Many Requests: rate limit exceeded"), contentJSON
	case http.StatusInternalServerError:
		return errorBody("internal_server_error", "An unexpected error occurred"), contentJSON
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		// What a load balancer sends: HTML, not JSON.
		text := strconv.Itoa(status) + " " + http.StatusText(status)
		return []byte("<html>\r\n<head><title>" + text + "</title></head>\r\n<body>\r\n<center><h1>" +
			text + "</h1></center>\r\n</body>\r\n</html>\r\n"), contentHTML
	}
	code := "error"
	if t := http.StatusText(status); t != "" {
		code = snake(t)
	}
	return jsonAPIErrorBody(status, code, ""), contentJSON
}

// snake turns "Service Unavailable" into "service_unavailable".
func snake(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b = append(b, c)
		default:
			if len(b) > 0 && b[len(b)-1] != '_' {
				b = append(b, '_')
			}
		}
	}
	return string(b)
}

// conversationBody is the 200 answer of an update.
func conversationBody(id string, rev int64, attrs map[string]any) []byte {
	out := make(map[string]any, len(attrs)+1)
	for k, v := range attrs {
		out[k] = v
	}
	out["rev"] = rev
	data := map[string]any{"type": "conversation", "id": id, "attributes": out}
	if cust, ok := attrs["customer"].(string); ok {
		data["relationships"] = map[string]any{
			"customer": map[string]any{"data": map[string]any{"type": "customer", "id": cust}},
		}
	}
	return mustJSON(map[string]any{"data": data})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only values decoded from JSON or built here are marshalled.
		panic("kustomertest: " + err.Error())
	}
	return b
}
