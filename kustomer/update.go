package kustomer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Update is one "update this conversation" message: the three arguments of the original
// script. The JSON form is {"id": "...", "replace": false, "body": {...}}.
type Update struct {
	ID      string          `json:"id"`
	Replace bool            `json:"replace,omitempty"`
	Body    json.RawMessage `json:"body"`
}

// FieldError is one problem with one field, e.g. Field "body.priority", Problem "7 is not an integer from 1 to 5".
type FieldError struct {
	Field   string
	Problem string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// ValidationError lists every problem found in a message. It matches ErrInvalid.
//
// Error quotes the values at fault (cut to 40 characters), for the dead letter's reason;
// Redacted names only each field and its problem, for logs, which never show message values.
type ValidationError struct {
	Problems []FieldError
	redacted []string // Problems' problems without values, when Decode or Validate made it
}

// Redacted is Error without any value of the message: each field's path and its problem,
// with the value named by its kind (`body.priority: a number is not an integer from 1 to 5`).
// A problem whose redacted form is unknown (a ValidationError built elsewhere) is said as
// "invalid value".
func (e *ValidationError) Redacted() string {
	return e.join(func(i int, p FieldError) string {
		if len(e.redacted) == len(e.Problems) {
			return e.redacted[i]
		}
		return "invalid value"
	})
}

func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Error joins the problems with "; " in the order they were found.
func (e *ValidationError) Error() string {
	return e.join(func(_ int, p FieldError) string { return p.Problem })
}

// join says each problem as its field and what problem says of it, joined with "; ".
func (e *ValidationError) join(problem func(i int, p FieldError) string) string {
	if len(e.Problems) == 0 {
		return ErrInvalid.Error()
	}
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Field)
		b.WriteString(": ")
		b.WriteString(problem(i, p))
	}
	return b.String()
}

// MaxBodyBytes is the largest body, in bytes of compact JSON, that an Update may carry.
const MaxBodyBytes = 400 * 1024

// MaxProblems caps how many problems one ValidationError lists; the rest are counted in a
// final problem of field "message". Only hostile or garbage messages reach it.
const MaxProblems = 100

// maxDepth is how deeply JSON may nest, the same limit encoding/json applies.
const maxDepth = 10000

// idWant describes a valid id in problems.
const idWant = "a 24-character hex id"

// ValidID reports whether s is a Kustomer id: exactly 24 hexadecimal characters (0-9, a-f, A-F).
// Kustomer never documents the format, but every id it issues is a MongoDB ObjectId, so this is
// the rule. It is also what keeps an id from injecting a path into the request URL.
func ValidID(s string) bool {
	if len(s) != 24 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Decode parses and validates one message of the form
// {"id": "<24-hex id>", "replace": false, "body": {...}}.
//
// On success Update.Body holds the body as compact JSON, ready to send, and Update.ID is a
// valid id. On failure the Update is zero and the error is a *ValidationError (matching
// ErrInvalid) listing every problem in document order, missing required fields of an object
// after its other problems. Malformed JSON is reported alone, as one problem of field
// "message". Decode never panics.
func Decode(data []byte) (Update, error) {
	return quickFirst(func(open func([]byte) tokenReader) (Update, error) { return decode(data, open) })
}

// quickFirst runs check with the lexer, and again with the reference json.Decoder when the
// lexer finds a problem or gives up: the reference's problems are the ones reported, word
// for word, so the lexer only has to be right about what is valid.
func quickFirst[T any](check func(open func([]byte) tokenReader) (T, error)) (T, error) {
	if v, err := check(newLexer); err == nil {
		return v, nil
	}
	return check(newDecoder)
}

// decode is Decode reading the tokens of data through open: newLexer is quick and exact for
// valid messages, newDecoder is the reference for the problems of invalid ones.
func decode(data []byte, open func([]byte) tokenReader) (Update, error) {
	c := &checker{open: open}
	if !utf8.Valid(data) {
		c.push("message")
		c.add("not valid UTF-8")
		return Update{}, c.result()
	}
	c.dec = c.open(data)
	tok, ok := c.token()
	if !ok {
		c.syntaxProblem("message", 0)
		return Update{}, c.result()
	}
	if tok != json.Delim('{') {
		c.push("message")
		c.addValue(tok, " is not a JSON object")
		return Update{}, c.result()
	}
	var (
		u                             Update
		haveID, haveReplace, haveBody bool
		unknown                       keySet
	)
	for {
		tok, ok := c.token()
		if !ok || tok == json.Delim('}') {
			break
		}
		key, _ := tok.(string) // Token returns only strings in key position
		start := c.dec.InputOffset()
		val, ok := c.token()
		if !ok {
			break
		}
		switch key {
		case "id":
			c.push("id")
			if haveID {
				c.add("duplicate field")
				c.skip(val)
			} else if s, ok := val.(string); ok && ValidID(s) {
				u.ID = s
			} else {
				c.mismatch(val, idWant)
			}
			haveID = true
			c.pop()
		case "replace":
			c.push("replace")
			if haveReplace {
				c.add("duplicate field")
				c.skip(val)
			} else if r, ok := parseReplace(val); ok {
				u.Replace = r
			} else {
				c.mismatch(val, `true, false, "true" or "false"`)
			}
			haveReplace = true
			c.pop()
		case "body":
			c.push("body")
			if haveBody {
				c.add("duplicate field")
				c.skip(val)
			} else {
				c.value(bodyRule, val)
				if val == json.Delim('{') && c.syntax == nil {
					raw := data[start:c.dec.InputOffset()]
					// raw is `<space>:<space>{...}`: Token returned the key before the colon.
					u.Body = c.compact(raw[bytes.IndexByte(raw, ':')+1:])
				}
			}
			haveBody = true
			c.pop()
		default:
			c.push("message")
			c.push(key)
			if !unknown.add(key) {
				c.add("unknown field")
			}
			c.skip(val)
			c.pop()
			c.pop()
		}
	}
	c.end()
	if c.syntax != nil {
		c.syntaxProblem("message", 0)
		return Update{}, c.result()
	}
	if !haveID {
		c.missing("id")
	}
	if !haveBody {
		c.missing("body")
	}
	if err := c.result(); err != nil {
		return Update{}, err
	}
	return u, nil
}

// Validate checks an Update built in code by the rules Decode applies: ID must be a valid id
// and Body must pass ValidateBody. The error is a *ValidationError or nil.
func (u Update) Validate() error {
	_, err := quickFirst(func(open func([]byte) tokenReader) (struct{}, error) { return struct{}{}, u.validate(open) })
	return err
}

func (u Update) validate(open func([]byte) tokenReader) error {
	c := &checker{open: open}
	c.push("id")
	switch {
	case u.ID == "":
		c.add("required field is missing")
	case !ValidID(u.ID):
		c.addValue(u.ID, " is not "+idWant)
	}
	c.pop()
	c.body(u.Body)
	return c.result()
}

// ValidateBody checks a conversation update body alone: either conversation attributes or
// {"customer": "<id>"}, at most MaxBodyBytes once compacted. Problems name fields starting
// with "body". The error is a *ValidationError or nil.
func ValidateBody(body []byte) error {
	_, err := quickFirst(func(open func([]byte) tokenReader) (struct{}, error) {
		c := &checker{open: open}
		c.body(body)
		return struct{}{}, c.result()
	})
	return err
}

var errTrailing = errors.New("unexpected data after the JSON value")

func newDecoder(data []byte) tokenReader {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec
}

func parseReplace(tok json.Token) (replace, ok bool) {
	switch v := tok.(type) {
	case nil:
		return false, true
	case bool:
		return v, true
	case string:
		switch v {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	return false, false
}

// kind is what a rule demands of a value.
type kind uint8

const (
	kString  kind = iota + 1
	kBool         // true or false
	kNumber       // any JSON number that fits a float64
	kInteger      // a number without a fractional part (2.0 counts)
	kRange        // an integer from lo to hi
	kNumIn        // a number equal to one of nums
	kEnum         // a string from enum
	kID           // a string that passes ValidID
	kObject       // an object with exactly the listed fields
	kArray        // an array of elem, at most maxItems long when maxItems > 0
	kFree         // an object with any content
)

// rule is the schema of one value. The schema is read-only data.
type rule struct {
	kind     kind
	want     string // what a valid value is, for problems: "a string", "one of open, snoozed, done"
	enum     []string
	nums     []float64
	lo, hi   float64
	fields   []field // at most 64
	elem     *rule
	maxItems int
	nonEmpty bool   // an object with no fields is invalid
	alone    string // an object field that may not be combined with any other
}

type field struct {
	name     string
	rule     *rule
	required bool
}

func (r *rule) index(name string) int {
	for i := range r.fields {
		if r.fields[i].name == name {
			return i
		}
	}
	return -1
}

func enumRule(values ...string) *rule {
	return &rule{kind: kEnum, enum: values, want: "one of " + strings.Join(values, ", ")}
}

func objectRule(fields ...field) *rule {
	return &rule{kind: kObject, want: "an object", fields: fields}
}

func arrayRule(elem *rule, maxItems int) *rule {
	return &rule{kind: kArray, want: "an array", elem: elem, maxItems: maxItems}
}

func opt(name string, r *rule) field { return field{name: name, rule: r} }
func req(name string, r *rule) field { return field{name: name, rule: r, required: true} }

var (
	stringRule  = &rule{kind: kString, want: "a string"}
	boolRule    = &rule{kind: kBool, want: "a boolean"}
	numberRule  = &rule{kind: kNumber, want: "a number"}
	stringsRule = arrayRule(stringRule, 0)
	freeRule    = &rule{kind: kFree, want: "an object"}

	// bodyRule is the conversation update body, after the script this project grew from
	// (shared/seed/update-conversation.ts), plus the {"customer": id} move.
	bodyRule = func() *rule {
		r := objectRule(
			opt("externalId", stringRule),
			opt("name", stringRule),
			opt("direction", enumRule("in", "out")),
			opt("priority", &rule{kind: kRange, want: "an integer from 1 to 5", lo: 1, hi: 5}),
			opt("satisfaction", numberRule),
			opt("satisfactionLevel", objectRule(
				opt("form", stringRule),
				opt("formResponse", stringRule),
				req("createdAt", stringRule),
				opt("updatedAt", stringRule),
				req("status", enumRule("scheduled", "offered", "rated", "commented", "canceled", "unresponded")),
				opt("scheduledFor", stringRule),
				opt("firstAnswer", stringRule),
				opt("sentAt", stringRule),
				opt("score", &rule{kind: kNumIn, want: "0 or 1", nums: []float64{0, 1}}),
				opt("rating", numberRule),
				opt("channel", enumRule("email", "sms", "chat", "facebook", "twitter-dm", "twitter-tweet",
					"voice", "instagram", "instagram-comment", "whatsapp", "form")),
				opt("sentBy", stringRule),
				opt("sentByTeams", stringsRule),
			)),
			opt("suggestedShortcuts", arrayRule(objectRule(
				req("shortcutId", stringRule),
				req("confidence", numberRule),
			), 0)),
			opt("status", enumRule("open", "snoozed", "done")),
			opt("replyChannel", stringRule),
			opt("subStatus", stringRule),
			opt("snooze", objectRule(
				opt("time", stringRule),
				req("status", enumRule("scheduled", "canceled", "elapsed")),
			)),
			opt("tags", stringsRule),
			opt("suggestedTags", arrayRule(objectRule(
				req("tag", stringRule),
				req("confidence", numberRule),
			), 0)),
			opt("sentiment", objectRule(
				req("polarity", &rule{kind: kNumIn, want: "one of -1, 0, 1", nums: []float64{-1, 0, 1}}),
				req("confidence", numberRule),
			)),
			opt("assignedUsers", arrayRule(stringRule, 10)),
			opt("assignedTeams", arrayRule(stringRule, 10)),
			opt("custom", freeRule),
			opt("deleted", boolRule),
			opt("ended", boolRule),
			opt("endedAt", stringRule),
			opt("endedReason", stringRule),
			opt("endedBy", stringRule),
			opt("endedByType", enumRule("user", "customer")),
			opt("locked", boolRule),
			opt("rev", &rule{kind: kInteger, want: "an integer"}),
			opt("defaultLang", stringRule),
			opt("queue", freeRule),
			opt("customer", &rule{kind: kID, want: idWant}),
		)
		r.nonEmpty = true
		r.alone = "customer"
		return r
	}()
)

// checker walks JSON tokens once, checking them against rules and collecting problems.
type checker struct {
	open     func([]byte) tokenReader // newLexer or newDecoder
	dec      tokenReader
	depth    int
	syntax   error // the first error reading tokens; every walk stops at once
	path     []segment
	problems []FieldError
	redacted []string // for each of problems, its problem without the message's values
	dropped  int      // problems beyond MaxProblems
}

// segment is one step of a field path: an object key, or an array index when index >= 0.
type segment struct {
	key   string
	index int
}

func (c *checker) push(key string)  { c.path = append(c.path, segment{key: key, index: -1}) }
func (c *checker) pushIndex(i int)  { c.path = append(c.path, segment{index: i}) }
func (c *checker) pop()             { c.path = c.path[:len(c.path)-1] }
func (c *checker) missing(f string) { c.push(f); c.add("required field is missing"); c.pop() }

// add records a problem with the field at the current path; it quotes nothing of the message.
func (c *checker) add(problem string) { c.addRedacted(problem, problem) }

// addValue records that the value starting with tok has a problem, said by rest: the problem
// names the value, its redacted form only the value's kind.
func (c *checker) addValue(tok json.Token, rest string) {
	c.addRedacted(describe(tok)+rest, kindOf(tok)+rest)
}

func (c *checker) addRedacted(problem, redacted string) {
	if len(c.problems) >= MaxProblems {
		c.dropped++
		return
	}
	c.problems = append(c.problems, FieldError{Field: renderPath(c.path), Problem: problem})
	c.redacted = append(c.redacted, redacted)
}

func (c *checker) result() error {
	if len(c.problems) == 0 {
		return nil
	}
	problems, redacted := c.problems, c.redacted
	if c.dropped > 0 {
		more := fmt.Sprintf("%d more problems not listed", c.dropped)
		problems = append(problems, FieldError{Field: "message", Problem: more})
		redacted = append(redacted, more)
	}
	return &ValidationError{Problems: problems, redacted: redacted}
}

// token reads the next token, tracking depth. It returns false once reading has failed.
func (c *checker) token() (json.Token, bool) {
	if c.syntax != nil {
		return nil, false
	}
	tok, err := c.dec.Token()
	if err != nil {
		c.syntax = err
		return nil, false
	}
	switch tok {
	case json.Delim('{'), json.Delim('['):
		c.depth++
		if c.depth > maxDepth {
			c.syntax = fmt.Errorf("nested more than %d levels deep", maxDepth)
			return nil, false
		}
	case json.Delim('}'), json.Delim(']'):
		c.depth--
	}
	return tok, true
}

// end records a syntax error unless the input ends after the value read: one JSON value and
// nothing but white space after it. It does nothing once reading has failed.
func (c *checker) end() {
	if c.syntax != nil {
		return
	}
	if _, err := c.dec.Token(); err != io.EOF {
		c.syntax = err
		if err == nil {
			c.syntax = errTrailing
		}
	}
}

// syntaxProblem replaces the problems found since the first `keep` with one problem naming
// the syntax error: once the JSON is broken, nothing else said about it is reliable.
func (c *checker) syntaxProblem(field string, keep int) {
	c.problems, c.redacted, c.dropped = c.problems[:keep], c.redacted[:keep], 0
	var msg string
	var se *json.SyntaxError
	redacted := "invalid JSON" // the reader's error may quote the message
	switch {
	case errors.As(c.syntax, &se):
		msg = fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, se.Error())
		redacted = fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case c.syntax == io.EOF && c.dec.InputOffset() == 0:
		msg, redacted = "no JSON value", "no JSON value"
	case c.syntax == io.EOF, c.syntax == io.ErrUnexpectedEOF:
		msg = "invalid JSON: unexpected end of input"
		redacted = msg
	default:
		msg = "invalid JSON: " + c.syntax.Error()
	}
	c.problems = append(c.problems, FieldError{Field: field, Problem: msg})
	c.redacted = append(c.redacted, redacted)
}

// body checks a body given on its own, as in Validate and ValidateBody.
func (c *checker) body(raw []byte) {
	c.push("body")
	defer c.pop()
	if len(raw) == 0 {
		c.add("required field is missing")
		return
	}
	if !utf8.Valid(raw) {
		c.add("not valid UTF-8")
		return
	}
	keep := len(c.problems)
	c.dec, c.depth = c.open(raw), 0
	if tok, ok := c.token(); ok {
		c.value(bodyRule, tok)
	}
	c.end()
	if c.syntax != nil {
		c.syntaxProblem("body", keep)
		return
	}
	if len(raw) > MaxBodyBytes {
		c.compact(raw)
	}
}

// compact returns raw, valid JSON, as compact JSON, or nil after recording that it is too
// long to be sent.
func (c *checker) compact(raw []byte) []byte {
	buf := appendCompact(make([]byte, 0, len(raw)), raw)
	if len(buf) > MaxBodyBytes {
		c.add(fmt.Sprintf("%d bytes of compact JSON; at most %d allowed", len(buf), MaxBodyBytes))
		return nil
	}
	return buf
}

// mismatch records that tok is not what was wanted and skips the rest of tok's value.
func (c *checker) mismatch(tok json.Token, want string) {
	c.addValue(tok, " is not "+want)
	c.skip(tok)
}

// skip consumes the rest of a value whose first token was tok.
func (c *checker) skip(tok json.Token) {
	if tok != json.Delim('{') && tok != json.Delim('[') {
		return
	}
	for target := c.depth - 1; c.depth > target; {
		if _, ok := c.token(); !ok {
			return
		}
	}
}

// value checks the value starting with tok against r, consuming all of it.
func (c *checker) value(r *rule, tok json.Token) {
	ok := false
	switch r.kind {
	case kString:
		_, ok = tok.(string)
	case kBool:
		_, ok = tok.(bool)
	case kNumber, kInteger, kRange, kNumIn:
		n, isNum := tok.(json.Number)
		if !isNum {
			break
		}
		v, err := strconv.ParseFloat(string(n), 64)
		if err != nil {
			c.addValue(tok, " is out of range")
			return
		}
		switch r.kind {
		case kNumber:
			ok = true
		case kInteger:
			ok = v == math.Trunc(v)
		case kRange:
			ok = v == math.Trunc(v) && r.lo <= v && v <= r.hi
		case kNumIn:
			ok = slices.Contains(r.nums, v)
		}
	case kEnum:
		s, isStr := tok.(string)
		ok = isStr && slices.Contains(r.enum, s)
	case kID:
		s, isStr := tok.(string)
		ok = isStr && ValidID(s)
	case kObject:
		if tok == json.Delim('{') {
			c.object(r)
			return
		}
	case kArray:
		if tok == json.Delim('[') {
			c.array(r)
			return
		}
	case kFree:
		if tok == json.Delim('{') {
			c.free()
			return
		}
	}
	if !ok {
		c.mismatch(tok, r.want)
	}
}

// object checks the members of an object whose '{' has been read.
func (c *checker) object(r *rule) {
	var (
		seen    uint64 // bit i: r.fields[i] was present
		members int
		alone   int // members named r.alone
		unknown keySet
	)
	for {
		tok, ok := c.token()
		if !ok {
			return
		}
		if tok == json.Delim('}') {
			break
		}
		key, _ := tok.(string) // Token returns only strings in key position
		val, ok := c.token()
		if !ok {
			return
		}
		members++
		if r.alone != "" && key == r.alone {
			alone++
		}
		c.push(key)
		i := r.index(key)
		switch {
		case i < 0:
			if !unknown.add(key) {
				c.add("unknown field")
			}
			c.skip(val)
		case seen&(1<<i) != 0:
			c.add("duplicate field")
			c.skip(val)
		case val == nil && r.fields[i].required:
			c.add("null is not " + r.fields[i].rule.want)
		case val == nil:
			c.add("null is not allowed; omit the field")
		default:
			c.value(r.fields[i].rule, val)
		}
		if i >= 0 {
			seen |= 1 << i
		}
		c.pop()
	}
	if r.nonEmpty && members == 0 {
		c.add("empty object; nothing to update")
	}
	if alone > 0 && members > alone {
		c.push(r.alone)
		c.add(fmt.Sprintf(`cannot be combined with other fields; to move the conversation send {%q: "<id>"} alone`, r.alone))
		c.pop()
	}
	for i, f := range r.fields {
		if f.required && seen&(1<<i) == 0 {
			c.missing(f.name)
		}
	}
}

// array checks the items of an array whose '[' has been read.
func (c *checker) array(r *rule) {
	n := 0
	for {
		tok, ok := c.token()
		if !ok {
			return
		}
		if tok == json.Delim(']') {
			break
		}
		c.pushIndex(n)
		c.value(r.elem, tok)
		c.pop()
		n++
	}
	if r.maxItems > 0 && n > r.maxItems {
		c.add(fmt.Sprintf("%d items; at most %d allowed", n, r.maxItems))
	}
}

// free walks an object of free content whose '{' has been read. Any value is allowed
// except duplicate keys in an object.
func (c *checker) free() {
	type frame struct {
		object bool
		keys   keySet
		items  int
	}
	stack := []frame{{object: true}}
	base := len(c.path)
	for len(stack) > 0 {
		tok, ok := c.token()
		if !ok {
			c.path = c.path[:base]
			return
		}
		if tok == json.Delim('}') || tok == json.Delim(']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 {
				c.pop() // the member or item this container was
			}
			continue
		}
		top := &stack[len(stack)-1]
		val := tok
		if top.object {
			key, _ := tok.(string)
			if val, ok = c.token(); !ok {
				c.path = c.path[:base]
				return
			}
			c.push(key)
			if top.keys.add(key) {
				c.add("duplicate field")
			}
		} else {
			c.pushIndex(top.items)
			top.items++
		}
		if val == json.Delim('{') || val == json.Delim('[') {
			stack = append(stack, frame{object: val == json.Delim('{')})
			continue
		}
		c.pop()
	}
}

// keySet remembers the keys of one object: a short list, then a map once it grows.
type keySet struct {
	list []string
	m    map[string]struct{}
}

// add records key and reports whether it was already present.
func (s *keySet) add(key string) bool {
	if s.m != nil {
		if _, dup := s.m[key]; dup {
			return true
		}
		s.m[key] = struct{}{}
		return false
	}
	if slices.Contains(s.list, key) {
		return true
	}
	s.list = append(s.list, key)
	if len(s.list) > 16 {
		s.m = make(map[string]struct{}, 2*len(s.list))
		for _, k := range s.list {
			s.m[k] = struct{}{}
		}
		s.list = nil
	}
	return false
}

// renderPath writes a path like body.suggestedTags[2].confidence. Keys that are not plain
// names are quoted, long keys are cut, and very deep paths keep only their ends.
func renderPath(path []segment) string {
	const ends = 8
	var b strings.Builder
	for i, s := range path {
		if len(path) > 2*ends && i == ends {
			b.WriteString("[...]")
		}
		if len(path) > 2*ends && i >= ends && i < len(path)-ends {
			continue
		}
		switch {
		case s.index >= 0:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.index))
			b.WriteByte(']')
		case plainKey(s.key):
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.key)
		default:
			b.WriteByte('[')
			b.WriteString(quote(s.key))
			b.WriteByte(']')
		}
	}
	return b.String()
}

func plainKey(k string) bool {
	if k == "" || len(k) > 40 || '0' <= k[0] && k[0] <= '9' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '$') {
			return false
		}
	}
	return true
}

// describe names a value in a problem: quoted and cut strings, literal numbers, "an object".
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case string:
		return quote(v)
	case json.Number:
		if len(v) > 40 {
			return string(v[:40]) + "..."
		}
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return "an object"
	}
	return fmt.Sprint(tok)
}

// kindOf names the kind of a value in a redacted problem, where describe would quote it.
func kindOf(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return "an object"
	}
	return "a value"
}

// quote quotes s for a problem, cut to its first 40 characters.
func quote(s string) string {
	n := 0
	for i := range s {
		if n == 40 {
			return strconv.Quote(s[:i]) + "..."
		}
		n++
	}
	return strconv.Quote(s)
}
