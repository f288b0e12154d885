package kustomer_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

const validID = "5f3c9a1b2c3d4e5f60718293"

// message builds a message with a valid id around body, which is JSON text.
func message(body string) string {
	return `{"id": "` + validID + `", "body": ` + body + `}`
}

// problems asserts that err is a validation error and returns its problems.
func problems(tb testing.TB, err error) []kustomer.FieldError {
	tb.Helper()
	if err == nil {
		tb.Fatal("got no error, want a validation error")
	}
	if !errors.Is(err, kustomer.ErrInvalid) {
		tb.Fatalf("errors.Is(%v, ErrInvalid) = false", err)
	}
	var ve *kustomer.ValidationError
	if !errors.As(err, &ve) {
		tb.Fatalf("error %T is not a *ValidationError", err)
	}
	if len(ve.Problems) == 0 {
		tb.Fatal("validation error lists no problems")
	}
	return ve.Problems
}

// requireProblem asserts that err lists a problem with exactly field whose text contains want.
func requireProblem(tb testing.TB, err error, field, want string) {
	tb.Helper()
	ps := problems(tb, err)
	for _, p := range ps {
		if p.Field == field && strings.Contains(p.Problem, want) {
			return
		}
	}
	tb.Fatalf("no problem %q containing %q in:\n%v", field, want, err)
}

func decodeOK(tb testing.TB, msg string) kustomer.Update {
	tb.Helper()
	u, err := kustomer.Decode([]byte(msg))
	if err != nil {
		tb.Fatalf("Decode(%s): %v", msg, err)
	}
	return u
}

// rejectCase is a message Decode must reject, with the field and text of one of its problems.
type rejectCase struct {
	name, msg, field, problem string
}

// rejectCases is the validation table: one message breaking each rule. The schema test
// (schema_test.go) runs it too.
var rejectCases = func() []rejectCase {
	tooLarge := `{"name": "` + strings.Repeat("x", kustomer.MaxBodyBytes) + `"}`
	tooDeep := message(`{"custom": {"a": ` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}}`)
	return []rejectCase{
		{"bad JSON is rejected", `{"id": "` + validID + `", `, "message", "invalid JSON"},
		{"a syntax error names its byte offset", `{"id" "x"}`, "message", "invalid JSON at byte 6"},
		{"an empty message is rejected", ``, "message", "no JSON value"},
		{"a message that is not an object is rejected", `["x"]`, "message", "an array is not a JSON object"},
		{"invalid UTF-8 is rejected", message("{\"name\": \"\xff\"}"), "message", "not valid UTF-8"},
		{"data after the message is rejected", message(`{"status": "done"}`) + ` {}`, "message", "unexpected data"},
		{"nesting deeper than encoding/json allows is rejected", tooDeep, "message", "nested more than 10000 levels"},
		{"an unknown message field is rejected", `{"id": "` + validID + `", "body": {"status": "done"}, "foo": 1}`, "message.foo", "unknown field"},
		{"an odd unknown message field is quoted", `{"id": "` + validID + `", "body": {"status": "done"}, "a b": 1}`, `message["a b"]`, "unknown field"},
		{"a duplicate message field is rejected", `{"id": "` + validID + `", "id": "` + validID + `", "body": {"status": "done"}}`, "id", "duplicate field"},
		{"id is required", `{"body": {"status": "done"}}`, "id", "required field is missing"},
		{"id must be a string", `{"id": 5, "body": {"status": "done"}}`, "id", "5 is not a 24-character hex id"},
		{"id must not be null", `{"id": null, "body": {"status": "done"}}`, "id", "null is not a 24-character hex id"},
		{"id must be hex", `{"id": "5f3c9a1b2c3d4e5f6071829z", "body": {"status": "done"}}`, "id", `"5f3c9a1b2c3d4e5f6071829z" is not a 24-character hex id`},
		{"replace must be a boolean or its string", `{"id": "` + validID + `", "replace": "yes", "body": {"status": "done"}}`, "replace", `"yes" is not true, false, "true" or "false"`},
		{"body is required", `{"id": "` + validID + `"}`, "body", "required field is missing"},
		{"body must be an object", message(`"status=done"`), "body", `"status=done" is not an object`},
		{"body must not be null", message(`null`), "body", "null is not an object"},
		{"body must not be empty", message(`{}`), "body", "empty object; nothing to update"},
		{"body must fit MaxBodyBytes", message(tooLarge), "body", "at most 409600 allowed"},
		{"an unknown body field is rejected", message(`{"stauts": "done"}`), "body.stauts", "unknown field"},
		{"a duplicate body field is rejected", message(`{"status": "done", "status": "open"}`), "body.status", "duplicate field"},
		{"null is not a value", message(`{"name": null}`), "body.name", "null is not allowed; omit the field"},
		{"customer cannot be combined", message(`{"customer": "` + validID + `", "status": "done"}`), "body.customer", "cannot be combined with other fields"},
		{"customer must be an id", message(`{"customer": "../customers/x"}`), "body.customer", `"../customers/x" is not a 24-character hex id`},
		{"externalId must be a string", message(`{"externalId": 5}`), "body.externalId", "5 is not a string"},
		{"name must be a string", message(`{"name": ["a"]}`), "body.name", "an array is not a string"},
		{"direction must be in or out", message(`{"direction": "up"}`), "body.direction", `"up" is not one of in, out`},
		{"priority must be at most 5", message(`{"priority": 7}`), "body.priority", "7 is not an integer from 1 to 5"},
		{"priority must be at least 1", message(`{"priority": 0}`), "body.priority", "0 is not an integer from 1 to 5"},
		{"priority must be an integer", message(`{"priority": 2.5}`), "body.priority", "2.5 is not an integer from 1 to 5"},
		{"priority must be a number", message(`{"priority": "2"}`), "body.priority", `"2" is not an integer from 1 to 5`},
		{"satisfaction must be a number", message(`{"satisfaction": "high"}`), "body.satisfaction", `"high" is not a number`},
		{"a number must fit a float64", message(`{"satisfaction": 1e400}`), "body.satisfaction", "1e400 is out of range"},
		{"satisfactionLevel must be an object", message(`{"satisfactionLevel": "rated"}`), "body.satisfactionLevel", `"rated" is not an object`},
		{"satisfactionLevel.createdAt is required", message(`{"satisfactionLevel": {"status": "rated"}}`), "body.satisfactionLevel.createdAt", "required field is missing"},
		{"satisfactionLevel.status is required", message(`{"satisfactionLevel": {"createdAt": "2024-01-01T00:00:00Z"}}`), "body.satisfactionLevel.status", "required field is missing"},
		{"satisfactionLevel.status must be known", message(`{"satisfactionLevel": {"createdAt": "x", "status": "pending"}}`), "body.satisfactionLevel.status", `"pending" is not one of scheduled, offered, rated, commented, canceled, unresponded`},
		{"a required field must not be null", message(`{"satisfactionLevel": {"createdAt": "x", "status": null}}`), "body.satisfactionLevel.status", "null is not one of scheduled"},
		{"satisfactionLevel.score must be 0 or 1", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "score": 2}}`), "body.satisfactionLevel.score", "2 is not 0 or 1"},
		{"satisfactionLevel.rating must be a number", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "rating": true}}`), "body.satisfactionLevel.rating", "true is not a number"},
		{"satisfactionLevel.channel must be known", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "channel": "fax"}}`), "body.satisfactionLevel.channel", `"fax" is not one of email, sms, chat`},
		{"satisfactionLevel.sentBy must be a string", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "sentBy": 1}}`), "body.satisfactionLevel.sentBy", "1 is not a string"},
		{"satisfactionLevel.sentByTeams holds strings", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "sentByTeams": ["a", 2]}}`), "body.satisfactionLevel.sentByTeams[1]", "2 is not a string"},
		{"satisfactionLevel has no unknown fields", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "scroe": 1}}`), "body.satisfactionLevel.scroe", "unknown field"},
		{"suggestedShortcuts must be an array", message(`{"suggestedShortcuts": {}}`), "body.suggestedShortcuts", "an object is not an array"},
		{"suggestedShortcuts items must be objects", message(`{"suggestedShortcuts": ["s1"]}`), "body.suggestedShortcuts[0]", `"s1" is not an object`},
		{"suggestedShortcuts items need shortcutId", message(`{"suggestedShortcuts": [{"confidence": 0.5}]}`), "body.suggestedShortcuts[0].shortcutId", "required field is missing"},
		{"suggestedShortcuts items need confidence", message(`{"suggestedShortcuts": [{"shortcutId": "s1"}]}`), "body.suggestedShortcuts[0].confidence", "required field is missing"},
		{"suggestedShortcuts items have no unknown fields", message(`{"suggestedShortcuts": [{"shortcutId": "s1", "confidence": 1, "x": 1}]}`), "body.suggestedShortcuts[0].x", "unknown field"},
		{"status must be known", message(`{"status": "closed"}`), "body.status", `"closed" is not one of open, snoozed, done`},
		{"replyChannel must be a string", message(`{"replyChannel": false}`), "body.replyChannel", "false is not a string"},
		{"subStatus must be a string", message(`{"subStatus": {}}`), "body.subStatus", "an object is not a string"},
		{"snooze.status is required", message(`{"snooze": {"time": "2024-01-01T00:00:00Z"}}`), "body.snooze.status", "required field is missing"},
		{"snooze.status must be known", message(`{"snooze": {"status": "later"}}`), "body.snooze.status", `"later" is not one of scheduled, canceled, elapsed`},
		{"snooze.time must be a string", message(`{"snooze": {"status": "scheduled", "time": 1}}`), "body.snooze.time", "1 is not a string"},
		{"snooze has no unknown fields", message(`{"snooze": {"status": "scheduled", "until": "x"}}`), "body.snooze.until", "unknown field"},
		{"tags must be an array", message(`{"tags": "vip"}`), "body.tags", `"vip" is not an array`},
		{"tags hold strings", message(`{"tags": ["vip", {}]}`), "body.tags[1]", "an object is not a string"},
		{"array items must not be null", message(`{"tags": [null]}`), "body.tags[0]", "null is not a string"},
		{"suggestedTags items need confidence as a number", message(`{"suggestedTags": [{"tag": "a", "confidence": 1}, {"tag": "b", "confidence": 1}, {"tag": "c", "confidence": "high"}]}`), "body.suggestedTags[2].confidence", `"high" is not a number`},
		{"suggestedTags items need tag", message(`{"suggestedTags": [{"confidence": 1}]}`), "body.suggestedTags[0].tag", "required field is missing"},
		{"suggestedTags items have no unknown fields", message(`{"suggestedTags": [{"tag": "a", "confidence": 1, "score": 1}]}`), "body.suggestedTags[0].score", "unknown field"},
		{"sentiment.polarity must be -1, 0 or 1", message(`{"sentiment": {"polarity": 2, "confidence": 1}}`), "body.sentiment.polarity", "2 is not one of -1, 0, 1"},
		{"sentiment.polarity is required", message(`{"sentiment": {"confidence": 1}}`), "body.sentiment.polarity", "required field is missing"},
		{"sentiment.confidence is required", message(`{"sentiment": {"polarity": -1}}`), "body.sentiment.confidence", "required field is missing"},
		{"sentiment has no unknown fields", message(`{"sentiment": {"polarity": 1, "confidence": 1, "magnitude": 1}}`), "body.sentiment.magnitude", "unknown field"},
		{"assignedUsers holds at most 10", message(`{"assignedUsers": ` + ids(11) + `}`), "body.assignedUsers", "11 items; at most 10 allowed"},
		{"assignedUsers holds strings", message(`{"assignedUsers": [1]}`), "body.assignedUsers[0]", "1 is not a string"},
		{"assignedTeams holds at most 10", message(`{"assignedTeams": ` + ids(12) + `}`), "body.assignedTeams", "12 items; at most 10 allowed"},
		{"custom must be an object", message(`{"custom": []}`), "body.custom", "an array is not an object"},
		{"custom has no duplicate keys", message(`{"custom": {"tierStr": "a", "nested": [{"k": 1, "k": 2}]}}`), "body.custom.nested[0].k", "duplicate field"},
		{"queue must be an object", message(`{"queue": "q1"}`), "body.queue", `"q1" is not an object`},
		{"deleted must be a boolean", message(`{"deleted": "true"}`), "body.deleted", `"true" is not a boolean`},
		{"ended must be a boolean", message(`{"ended": 1}`), "body.ended", "1 is not a boolean"},
		{"locked must be a boolean", message(`{"locked": "no"}`), "body.locked", `"no" is not a boolean`},
		{"endedAt must be a string", message(`{"endedAt": 1700000000}`), "body.endedAt", "1700000000 is not a string"},
		{"endedReason must be a string", message(`{"endedReason": true}`), "body.endedReason", "true is not a string"},
		{"endedBy must be a string", message(`{"endedBy": []}`), "body.endedBy", "an array is not a string"},
		{"endedByType must be known", message(`{"endedByType": "bot"}`), "body.endedByType", `"bot" is not one of user, customer`},
		{"rev must be an integer", message(`{"rev": 1.5}`), "body.rev", "1.5 is not an integer"},
		{"defaultLang must be a string", message(`{"defaultLang": 1}`), "body.defaultLang", "1 is not a string"},
	}
}()

func TestDecodeRejectsEachRule(t *testing.T) {
	t.Parallel()
	for _, tc := range rejectCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := kustomer.Decode([]byte(tc.msg))
			requireProblem(t, err, tc.field, tc.problem)
			if u.ID != "" || u.Body != nil || u.Replace {
				t.Errorf("Decode returned %+v with its error, want the zero Update", u)
			}
		})
	}
}

// ids returns a JSON array of n distinct valid ids.
func ids(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("%q", fmt.Sprintf("%024x", i))
	}
	return "[" + strings.Join(s, ",") + "]"
}

func TestDecodeListsEveryProblemInOrder(t *testing.T) {
	t.Parallel()
	msg := `{"id": "../customers/x", "replace": 1, "extra": true, "body": {
		"satisfactionLevel": {"status": "pending", "createdAt": "2024-01-01T00:00:00Z"},
		"priority": 7,
		"stauts": "done",
		"snooze": {},
		"tags": ["vip", 3]
	}}`
	_, err := kustomer.Decode([]byte(msg))
	want := []kustomer.FieldError{
		{Field: "id", Problem: `"../customers/x" is not a 24-character hex id`},
		{Field: "replace", Problem: `1 is not true, false, "true" or "false"`},
		{Field: "message.extra", Problem: "unknown field"},
		{Field: "body.satisfactionLevel.status", Problem: `"pending" is not one of scheduled, offered, rated, commented, canceled, unresponded`},
		{Field: "body.priority", Problem: "7 is not an integer from 1 to 5"},
		{Field: "body.stauts", Problem: "unknown field"},
		{Field: "body.snooze.status", Problem: "required field is missing"},
		{Field: "body.tags[1]", Problem: "3 is not a string"},
	}
	if got := problems(t, err); !slices.Equal(got, want) {
		t.Errorf("problems:\n got %q\nwant %q", got, want)
	}
}

func TestValidationErrorJoinsProblems(t *testing.T) {
	t.Parallel()
	_, err := kustomer.Decode([]byte(message(`{"satisfactionLevel": {"createdAt": "x", "status": "pending"}, "priority": 7}`)))
	want := `body.satisfactionLevel.status: "pending" is not one of scheduled, offered, rated, commented, canceled, unresponded; body.priority: 7 is not an integer from 1 to 5`
	if err == nil || err.Error() != want {
		t.Errorf("Error() = %v\nwant %s", err, want)
	}
}

func TestDecodeCapsTheProblemList(t *testing.T) {
	t.Parallel()
	fields := make([]string, kustomer.MaxProblems+50)
	for i := range fields {
		fields[i] = fmt.Sprintf(`"unknown%d": 1`, i)
	}
	_, err := kustomer.Decode([]byte(message(`{` + strings.Join(fields, ",") + `}`)))
	ps := problems(t, err)
	if len(ps) != kustomer.MaxProblems+1 {
		t.Fatalf("got %d problems, want %d", len(ps), kustomer.MaxProblems+1)
	}
	if last := ps[len(ps)-1]; last != (kustomer.FieldError{Field: "message", Problem: "50 more problems not listed"}) {
		t.Errorf("last problem = %+v", last)
	}
}

func TestDecodeRejectsPathInjection(t *testing.T) {
	t.Parallel()
	for _, id := range []string{
		"../customers/x",
		"../../v1/customers/5f3c9a1b2c3d4e5f60718293",
		"%2e%2e%2f%2e%2e%2f5f3c9a1b2c3d4e5f",
		"5f3c9a1b2c3d%2F4e5f60718",
		"5f3c9a1b2c3d/4e5f6071829",
		"5f3c9a1b2c3d\\4e5f6071829",
		"5f3c9a1b2c3d 4e5f6071829",
		"5f3c9a1b2c3d4e5f6071829 ",
		"5f3c9a1b2c3d4e5f6071829?",
		"5f3c9a1b2c3d4e5f6071829#",
		"5f3c9a1b2c3d4e5f6071829\n",
		"5f3c9a1b2c3d4e5f6071829\x00",
		"５f3c9a1b2c3d4e5f6071829", // fullwidth digit five
		"5f3c9a1b2c3d4e5f607182é",
		"5f3c9a1b2c3d4e5f6071829",   // 23
		"5f3c9a1b2c3d4e5f607182930", // 25
		"0x3c9a1b2c3d4e5f60718293",
		"",
	} {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			t.Parallel()
			if kustomer.ValidID(id) {
				t.Errorf("ValidID(%q) = true", id)
			}
			quoted, _ := json.Marshal(id)
			_, err := kustomer.Decode([]byte(`{"id": ` + string(quoted) + `, "body": {"status": "done"}}`))
			requireProblem(t, err, "id", "is not a 24-character hex id")
			requireProblem(t, kustomer.Update{ID: id, Body: json.RawMessage(`{"status":"done"}`)}.Validate(), "id", "")
		})
	}
	t.Run("JSON escapes are decoded before the check", func(t *testing.T) {
		t.Parallel()
		_, err := kustomer.Decode([]byte(`{"id": "\u002e\u002e/customers/5f3c9a1b2c3d4e", "body": {"status": "done"}}`))
		requireProblem(t, err, "id", `"../customers/5f3c9a1b2c3d4e" is not`)
	})
	t.Run("a long id is quoted cut to 40 characters", func(t *testing.T) {
		t.Parallel()
		long := strings.Repeat("../", 50)
		_, err := kustomer.Decode([]byte(`{"id": "` + long + `", "body": {"status": "done"}}`))
		requireProblem(t, err, "id", `"`+long[:40]+`"... is not`)
	})
}

func TestValidID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{validID, "5F3C9A1B2C3D4E5F60718293", "5f3C9a1B2c3D4e5F60718293", "000000000000000000000000"} {
		if !kustomer.ValidID(id) {
			t.Errorf("ValidID(%q) = false", id)
		}
	}
}

func TestDecodeReplace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		replace string // JSON text; "" leaves the field out
		want    bool
	}{
		{"", false},
		{"null", false},
		{"false", false},
		{"true", true},
		{`"false"`, false},
		{`"true"`, true},
	} {
		t.Run("replace "+tc.replace, func(t *testing.T) {
			t.Parallel()
			msg := message(`{"status": "done"}`)
			if tc.replace != "" {
				msg = `{"id": "` + validID + `", "replace": ` + tc.replace + `, "body": {"status": "done"}}`
			}
			if u := decodeOK(t, msg); u.Replace != tc.want {
				t.Errorf("Replace = %v, want %v", u.Replace, tc.want)
			}
		})
	}
	for _, bad := range []string{`"yes"`, `"TRUE"`, `""`, `1`, `0`, `[]`, `{"value": true}`} {
		t.Run("replace "+bad+" is rejected", func(t *testing.T) {
			t.Parallel()
			_, err := kustomer.Decode([]byte(`{"id": "` + validID + `", "replace": ` + bad + `, "body": {"status": "done"}}`))
			requireProblem(t, err, "replace", "is not true, false")
		})
	}
}

// everyAttribute is a body that sets every conversation attribute to a valid value.
const everyAttribute = `{
	"externalId": "ext-1", "name": "Refund", "direction": "in", "priority": 2.0,
	"satisfaction": 0.8,
	"satisfactionLevel": {"form": "f", "formResponse": "r", "createdAt": "2024-01-01T00:00:00Z",
		"updatedAt": "2024-01-02T00:00:00Z", "status": "rated", "scheduledFor": "s", "firstAnswer": "a",
		"sentAt": "t", "score": 1, "rating": 4.5, "channel": "twitter-dm", "sentBy": "u", "sentByTeams": ["t1"]},
	"suggestedShortcuts": [{"shortcutId": "s1", "confidence": 0.9}],
	"status": "snoozed", "replyChannel": "email", "subStatus": "waiting",
	"snooze": {"time": "2024-01-03T00:00:00Z", "status": "scheduled"},
	"tags": ["vip", "refund"], "suggestedTags": [{"tag": "t", "confidence": 0}],
	"sentiment": {"polarity": -1, "confidence": 0.5},
	"assignedUsers": ["000000000000000000000001", "000000000000000000000002", "000000000000000000000003",
		"000000000000000000000004", "000000000000000000000005", "000000000000000000000006",
		"000000000000000000000007", "000000000000000000000008", "000000000000000000000009",
		"00000000000000000000000a"],
	"assignedTeams": [],
	"custom": {"tierStr": "gold", "nested": {"any": [1, null, {"deep": true}]}, "nothing": null},
	"deleted": false, "ended": true, "endedAt": "2024-01-04T00:00:00Z", "endedReason": "solved",
	"endedBy": "u", "endedByType": "user", "locked": false, "rev": 7, "defaultLang": "en_us",
	"queue": {"id": "q1"}
}`

// acceptCases are messages Decode must accept. The schema test (schema_test.go) runs them too.
var acceptCases = []struct{ name, msg string }{
	{"every attribute", message(everyAttribute)},
	{"a customer move", message(`{"customer": "` + strings.ToUpper(validID) + `"}`)},
	{"a full replacement", `{"id": "` + validID + `", "replace": true, "body": {"status": "open", "tags": []}}`},
	{"a field order other than id, replace, body", `{"body": {"status": "done"}, "replace": "false", "id": "` + validID + `"}`},
}

func TestDecodeAcceptsBothBodies(t *testing.T) {
	t.Parallel()
	for _, tc := range acceptCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := decodeOK(t, tc.msg)
			if u.ID != validID {
				t.Errorf("ID = %q", u.ID)
			}
			var want bytes.Buffer
			raw := tc.msg[strings.Index(tc.msg, `"body": `)+len(`"body": `):]
			dec := json.NewDecoder(strings.NewReader(raw))
			var body json.RawMessage
			if err := dec.Decode(&body); err != nil {
				t.Fatal(err)
			}
			if err := json.Compact(&want, body); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(u.Body, want.Bytes()) {
				t.Errorf("Body = %s\nwant the compact original %s", u.Body, want.Bytes())
			}
		})
	}
}

func TestDecodedBodyIsACopy(t *testing.T) {
	t.Parallel()
	msg := []byte(message(`{"status": "done"}`))
	u := decodeOK(t, string(msg))
	for i := range msg {
		msg[i] = ' '
	}
	if string(u.Body) != `{"status":"done"}` {
		t.Errorf("Body changed with the input: %s", u.Body)
	}
}

func TestDecodeRoundTrips(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{
		message(everyAttribute),
		message(`{"customer": "` + validID + `"}`),
		`{"id": "` + validID + `", "replace": "true", "body": {"status": "open"}}`,
		message(`{"name": "Tom & Jerry <3>\u2028", "custom": {"a": "\u00e9\ud83d\ude00"}}`),
		message("{\"name\": \"raw \u2028 and \u2029 separators, \u00e9\"}"),
	} {
		u := decodeOK(t, msg)
		requireRoundTrip(t, u)
	}
}

// requireRoundTrip asserts that json.Marshal(u) decodes to u. Marshal escapes <, >, & and
// U+2028/9 in the body (same JSON value, other bytes), so the body is compared after the same
// escaping; a second round trip must then be byte-exact.
func requireRoundTrip(tb testing.TB, u kustomer.Update) {
	tb.Helper()
	data, err := json.Marshal(u)
	if err != nil {
		tb.Fatalf("Marshal(%+v): %v", u, err)
	}
	got, err := kustomer.Decode(data)
	if err != nil {
		tb.Fatalf("Decode(Marshal(u)) = %v for %s", err, data)
	}
	var escaped bytes.Buffer
	json.HTMLEscape(&escaped, u.Body)
	if got.ID != u.ID || got.Replace != u.Replace || !bytes.Equal(got.Body, escaped.Bytes()) {
		tb.Fatalf("round trip changed the update:\n got %+v %s\nwant %+v %s", got, got.Body, u, u.Body)
	}
	data2, err := json.Marshal(got)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(data, data2) {
		tb.Fatalf("second round trip changed the message:\n%s\n%s", data, data2)
	}
}

func TestDecodeAllowsDeepFreeContent(t *testing.T) {
	t.Parallel()
	// The message, body and custom take three levels; encoding/json allows 10000.
	deep := strings.Repeat("[", 9997) + strings.Repeat("]", 9997)
	u := decodeOK(t, message(`{"custom": {"a": `+deep+`}}`))
	requireRoundTrip(t, u)
}

func TestValidate(t *testing.T) {
	t.Parallel()
	t.Run("accepts an update built in code", func(t *testing.T) {
		t.Parallel()
		u := kustomer.Update{ID: validID, Replace: true, Body: json.RawMessage("{\n  \"status\": \"done\"\n}")}
		if err := u.Validate(); err != nil {
			t.Errorf("Validate: %v", err)
		}
	})
	t.Run("lists id and body problems together", func(t *testing.T) {
		t.Parallel()
		err := kustomer.Update{ID: "nope", Body: json.RawMessage(`{"priority": 9}`)}.Validate()
		want := []kustomer.FieldError{
			{Field: "id", Problem: `"nope" is not a 24-character hex id`},
			{Field: "body.priority", Problem: "9 is not an integer from 1 to 5"},
		}
		if got := problems(t, err); !slices.Equal(got, want) {
			t.Errorf("problems = %q, want %q", got, want)
		}
	})
	t.Run("requires id and body", func(t *testing.T) {
		t.Parallel()
		err := kustomer.Update{}.Validate()
		requireProblem(t, err, "id", "required field is missing")
		requireProblem(t, err, "body", "required field is missing")
	})
	t.Run("reports broken body JSON under body", func(t *testing.T) {
		t.Parallel()
		err := kustomer.Update{ID: validID, Body: json.RawMessage(`{"status": "done"`)}.Validate()
		requireProblem(t, err, "body", "invalid JSON")
	})
}

func TestValidateBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body, field, problem string }{
		{"names fields from body", `{"status": "closed"}`, "body.status", `"closed" is not one of`},
		{"rejects data after the body", `{"status": "done"} {"status": "open"}`, "body", "unexpected data"},
		{"rejects a body that is not an object", `["status"]`, "body", "an array is not an object"},
		{"rejects an empty body", ``, "body", "required field is missing"},
		{"rejects invalid UTF-8", "{\"name\": \"\xc3\x28\"}", "body", "not valid UTF-8"},
		{"rejects a mixed customer move", `{"customer": "` + validID + `", "name": "x"}`, "body.customer", "cannot be combined"},
		{"measures size as compact JSON", `{"name": "` + strings.Repeat("x", kustomer.MaxBodyBytes) + `"}`, "body", "bytes of compact JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireProblem(t, kustomer.ValidateBody([]byte(tc.body)), tc.field, tc.problem)
		})
	}
	t.Run("accepts a body whose whitespace alone passes the limit", func(t *testing.T) {
		t.Parallel()
		body := `{"status":` + strings.Repeat(" ", kustomer.MaxBodyBytes) + `"done"}`
		if err := kustomer.ValidateBody([]byte(body)); err != nil {
			t.Errorf("ValidateBody: %v", err)
		}
	})
	t.Run("accepts a body of exactly MaxBodyBytes", func(t *testing.T) {
		t.Parallel()
		body := `{"name":"` + strings.Repeat("x", kustomer.MaxBodyBytes-len(`{"name":""}`)) + `"}`
		if err := kustomer.ValidateBody([]byte(body)); err != nil {
			t.Errorf("ValidateBody: %v", err)
		}
		decodeOK(t, message(body))
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, bc := range []struct{ name, msg string }{
		{"typical", `{"id": "` + validID + `", "replace": false, "body": {"status": "done", "priority": 3, "tags": ["vip", "refund"], "assignedUsers": ["5f3c9a1b2c3d4e5f60718294"], "custom": {"tierStr": "gold"}}}`},
		{"customer", message(`{"customer": "` + validID + `"}`)},
		{"every attribute", message(everyAttribute)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := []byte(bc.msg)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := kustomer.Decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestValidationErrorRedactedQuotesNoValue(t *testing.T) {
	t.Parallel()
	msg := `{"id": "../customers/x", "replace": 1, "body": {"status": "secret-a", "priority": 7777, "tags": ["ok", 4242], "name": "x" "secret-b"}}`
	_, err := kustomer.Decode([]byte(msg))
	ve, ok := errors.AsType[*kustomer.ValidationError](err)
	if !ok {
		t.Fatalf("err = %v; want a *ValidationError", err)
	}
	if got, want := ve.Redacted(), "message: invalid JSON at byte 122"; got != want {
		t.Errorf("broken JSON: Redacted() = %q; want %q", got, want)
	}
	_, err = kustomer.Decode([]byte(`{"id": "../customers/x", "replace": 1, "body": {"status": "secret-a", "priority": 7777, "tags": ["ok", 4242]}}`))
	ve, _ = errors.AsType[*kustomer.ValidationError](err)
	want := `id: a string is not a 24-character hex id; replace: a number is not true, false, "true" or "false"; ` +
		`body.status: a string is not one of open, snoozed, done; body.priority: a number is not an integer from 1 to 5; body.tags[1]: a number is not a string`
	if got := ve.Redacted(); got != want {
		t.Errorf("Redacted() = %q\nwant %q", got, want)
	}
	for _, v := range []string{"customers", "secret-a", "7777", "4242"} {
		if strings.Contains(ve.Redacted(), v) || !strings.Contains(ve.Error(), v) {
			t.Errorf("%q: want it in Error() (%q) and not in Redacted()", v, ve.Error())
		}
	}
}
