package kustomer

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"unicode/utf8"
)

// tokenReader is what the validator reads JSON from: a json.Decoder (the reference, whose
// errors are the ones reported) or a lexer (the fast path for valid input).
type tokenReader interface {
	Token() (json.Token, error)
	InputOffset() int64
}

// errLexer is the lexer giving up: the input is not plain valid JSON, and the caller redoes
// the work with a json.Decoder, which says what is wrong.
var errLexer = errors.New("kustomer: lexer gave up")

// lexState is where the lexer is in the JSON grammar, as json.Decoder's token states.
type lexState uint8

const (
	lexTop         lexState = iota // the top-level value is next
	lexTopEnd                      // the top-level value was read: only white space may follow
	lexArrayStart                  // after '['
	lexArrayValue                  // after ',' in an array
	lexArrayComma                  // after a value in an array
	lexObjectStart                 // after '{'
	lexObjectKey                   // after ',' in an object
	lexObjectColon                 // after a key
	lexObjectValue                 // after ':'
	lexObjectComma                 // after a value in an object
)

// lexer yields the same tokens as a json.Decoder with UseNumber gives through Token, with the
// same InputOffset after each, for a single valid JSON value surrounded by white space; on
// anything else it returns errLexer (or io.EOF after the value), at some point before the end.
// It exists for speed: json.Decoder.Token decodes every scalar through reflection and
// allocates an error for every number it ends. It never accepts what json.Decoder refuses;
// FuzzLexer holds it to that.
type lexer struct {
	data    []byte
	pos     int
	state   lexState
	stack   []lexState // the states to return to after each open array or object
	buf     [16]lexState
	escaped bool // the last string literal holds escapes or bytes beyond ASCII
}

func newLexer(data []byte) tokenReader {
	l := &lexer{data: data}
	l.stack = l.buf[:0]
	return l
}

// InputOffset is the offset just after the last token read, as json.Decoder's.
func (l *lexer) InputOffset() int64 { return int64(l.pos) }

// Token returns the next token: json.Delim, string, json.Number, bool or nil.
func (l *lexer) Token() (json.Token, error) {
	raw, err := l.next()
	if err != nil {
		return nil, err
	}
	switch c := raw[0]; c {
	case '{', '[', '}', ']':
		return json.Delim(c), nil
	case '"':
		if tok, ok := names[string(raw[1:len(raw)-1])]; ok && !l.escaped {
			return tok, nil // no allocation for the names the rules know
		}
		s, ok := l.text(raw)
		if !ok {
			return nil, errLexer
		}
		return s, nil
	case 't':
		return true, nil
	case 'f':
		return false, nil
	case 'n':
		return nil, nil
	}
	return json.Number(raw), nil
}

// next reads the next token and returns its bytes: a delimiter, a string literal with its
// quotes (l.escaped says whether it holds escapes or bytes beyond ASCII), a number or a
// literal. A string literal is not checked beyond its bounds: text does that.
func (l *lexer) next() ([]byte, error) {
	for {
		for l.pos < len(l.data) && isSpace(l.data[l.pos]) {
			l.pos++
		}
		if l.pos == len(l.data) {
			if l.state == lexTopEnd {
				return nil, io.EOF
			}
			return nil, errLexer
		}
		start := l.pos
		switch c := l.data[l.pos]; c {
		case '{', '[':
			if !l.valueAllowed() || len(l.stack) >= maxDepth {
				return nil, errLexer
			}
			l.pos++
			l.stack = append(l.stack, l.state)
			if c == '{' {
				l.state = lexObjectStart
			} else {
				l.state = lexArrayStart
			}
			return l.data[start:l.pos], nil
		case '}', ']':
			if c == '}' && l.state != lexObjectStart && l.state != lexObjectComma ||
				c == ']' && l.state != lexArrayStart && l.state != lexArrayComma {
				return nil, errLexer
			}
			l.pos++
			l.state = l.stack[len(l.stack)-1]
			l.stack = l.stack[:len(l.stack)-1]
			l.valueEnd()
			return l.data[start:l.pos], nil
		case ':':
			if l.state != lexObjectColon {
				return nil, errLexer
			}
			l.pos++
			l.state = lexObjectValue
		case ',':
			switch l.state {
			case lexArrayComma:
				l.state = lexArrayValue
			case lexObjectComma:
				l.state = lexObjectKey
			default:
				return nil, errLexer
			}
			l.pos++
		case '"':
			key := l.state == lexObjectStart || l.state == lexObjectKey
			if !key && !l.valueAllowed() || !l.string() {
				return nil, errLexer
			}
			if key {
				l.state = lexObjectColon
			} else {
				l.valueEnd()
			}
			return l.data[start:l.pos], nil
		default:
			if !l.valueAllowed() || !l.scalar() {
				return nil, errLexer
			}
			l.valueEnd()
			return l.data[start:l.pos], nil
		}
	}
}

func (l *lexer) valueAllowed() bool {
	switch l.state {
	case lexTop, lexArrayStart, lexArrayValue, lexObjectValue:
		return true
	}
	return false
}

// valueEnd moves on after a complete value.
func (l *lexer) valueEnd() {
	switch l.state {
	case lexTop:
		l.state = lexTopEnd
	case lexArrayStart, lexArrayValue:
		l.state = lexArrayComma
	case lexObjectValue:
		l.state = lexObjectComma
	}
}

// string moves past the string literal at l.pos, setting l.escaped.
func (l *lexer) string() bool {
	l.escaped = false
	for i := l.pos + 1; i < len(l.data); i++ {
		switch c := l.data[i]; {
		case c == '"':
			l.pos = i + 1
			return true
		case c == '\\':
			l.escaped = true
			i++ // the escaped byte cannot end the literal
		case c < 0x20:
			return false
		case c >= utf8.RuneSelf:
			l.escaped = true
		}
	}
	return false
}

// text is the string a literal that next returned stands for. A literal with escapes or
// bytes beyond ASCII is decoded by encoding/json itself (unless it is plain UTF-8), so that it
// means exactly what it means there; ok is false when encoding/json refuses it.
func (l *lexer) text(raw []byte) (s string, ok bool) {
	if !l.escaped || bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), true
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// scalar moves past the number or literal at l.pos.
func (l *lexer) scalar() bool {
	rest := l.data[l.pos:]
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(rest) >= len(lit) && string(rest[:len(lit)]) == lit {
			l.pos += len(lit)
			return true
		}
	}
	n := numberLen(rest)
	l.pos += n
	return n > 0
}

// names are the field names and enumerated values of the rules, as tokens: the lexer returns
// these without allocating.
var names = func() map[string]json.Token {
	m := map[string]json.Token{"id": "id", "replace": "replace", "body": "body"}
	var walk func(r *rule)
	walk = func(r *rule) {
		for _, v := range r.enum {
			m[v] = v
		}
		for _, f := range r.fields {
			m[f.name] = f.name
			walk(f.rule)
		}
		if r.elem != nil {
			walk(r.elem)
		}
	}
	walk(bodyRule)
	return m
}()

// numberLen is the length of the JSON number at the start of b, 0 if there is none:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func numberLen(b []byte) int {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return 0
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return 0
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return 0
		}
		i = j
	}
	return i
}

// digits returns the index of the first byte at or after i that is not a decimal digit.
func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// appendCompact appends the valid JSON src to dst without its insignificant white space, as
// json.Compact does, in one pass without its scanner.
func appendCompact(dst, src []byte) []byte {
	start, inString := 0, false
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case !inString && isSpace(c):
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}

// revOf reads data.attributes.rev from a 2xx answer as parseRev does, with the lexer and one
// allocation (the lexer itself); ok is false when the lexer gave up, and then parseRev's answer is the
// one. As json.Unmarshal into parseRev's struct, keys match case-insensitively, a later key
// wins, null leaves a value as it is, and any value of the wrong type makes the rev 0.
func revOf(body []byte) (rev int64, ok bool) {
	w := revWalk{l: &lexer{data: body}}
	w.l.stack = w.l.buf[:0]
	w.value(0)
	if w.lost {
		return 0, false
	}
	if _, err := w.l.next(); err != io.EOF {
		return 0, false
	}
	if w.bad {
		return 0, true
	}
	return w.rev, true
}

// revWalk walks an answer for revOf.
type revWalk struct {
	l    *lexer
	rev  int64
	bad  bool // a value of the wrong type on the path: json.Unmarshal would fail
	lost bool // the lexer gave up
}

// revPath is the path to the rev: data, then attributes, then rev.
var revPath = [...]string{"data", "attributes", "rev"}

// value reads the value at depth (0: the answer, 1: data, 2: attributes, 3: the rev).
func (w *revWalk) value(depth int) {
	raw := w.token()
	switch {
	case w.lost:
	case raw[0] == 'n': // null leaves the field as it is
	case depth == len(revPath):
		v, err := strconv.ParseInt(string(raw), 10, 64)
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') || err != nil {
			w.bad = true
			w.skip(raw)
		} else {
			w.rev = v
		}
	case raw[0] == '{':
		w.object(depth)
	default:
		w.bad = true
		w.skip(raw)
	}
}

// object walks the members of the object at depth whose '{' was read.
func (w *revWalk) object(depth int) {
	for !w.lost {
		raw := w.token()
		if w.lost || raw[0] == '}' {
			return
		}
		key := raw[1 : len(raw)-1]
		if w.l.escaped {
			s, _ := w.l.text(raw) // checked by token
			key = []byte(s)
		}
		if bytes.EqualFold(key, []byte(revPath[depth])) {
			w.value(depth + 1)
		} else {
			w.skip(w.token())
		}
	}
}

// token is the lexer's next token; on an error, or a string literal that encoding/json
// refuses, w.lost is set and token returns a lone space.
func (w *revWalk) token() []byte {
	raw, err := w.l.next()
	if err == nil && raw[0] == '"' && w.l.escaped {
		_, ok := w.l.text(raw)
		if !ok {
			err = errLexer
		}
	}
	if err != nil {
		w.lost = true
		return []byte{' '}
	}
	return raw
}

// skip reads the rest of a value whose first token was raw.
func (w *revWalk) skip(raw []byte) {
	if raw[0] != '{' && raw[0] != '[' {
		return
	}
	for depth := 1; depth > 0 && !w.lost; {
		switch w.token()[0] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		}
	}
}
