// Package coalesce is the rule by which queued partial updates of one conversation go as one
// PUT: merged key by key, later values winning, where that leaves the conversation in the
// state applying each alone in order would, under either reading of what Kustomer does with
// nested objects (merged or replaced: unconfirmed, see KUSTOMER.md).
//
// It knows nothing of the pool that uses it: it reads update bodies and says whether the next
// one may join. The pool decides which updates it offers (held in the same lane, in stream
// order, none already sent) and keeps the bookkeeping of the group.
package coalesce

import (
	"bytes"
	"encoding/json"
	"slices"
)

// Group is the merged body of the partial updates added so far, in the order added.
// The zero value is not usable: start one with Start.
type Group struct {
	fields map[string]json.RawMessage
	size   int // bytes of the merged body as compact JSON
	limit  int
	n      int // updates in the group
}

// Alone reports whether an update goes alone, never merged: a replace (replace=true), a
// customer move (a body with "customer"), or a body that is not a JSON object.
func Alone(replace bool, body json.RawMessage) bool {
	if replace {
		return true
	}
	m, ok := fields(body)
	if !ok {
		return true
	}
	_, move := m["customer"]
	return move
}

// Start begins a group with the first update, whose body is at most limit bytes of compact
// JSON (the project's limit: kustomer.MaxBodyBytes). ok is false if that update goes alone.
func Start(replace bool, body json.RawMessage, limit int) (g *Group, ok bool) {
	if Alone(replace, body) {
		return nil, false
	}
	m, _ := fields(body)
	g = &Group{fields: m, limit: limit, n: 1}
	g.size = sizeOf(m)
	return g, true
}

// Add merges the next update (in stream order) into g if the rule allows it, and reports
// whether it did. It does not when the update goes alone, when a key present in both holds an
// object on either side (Kustomer may merge nested objects or replace them), or when the merged
// body would exceed the limit. The pool stops offering updates at the first refused.
func (g *Group) Add(replace bool, body json.RawMessage) bool {
	if Alone(replace, body) {
		return false
	}
	m, _ := fields(body)
	size := g.size
	for k, v := range m {
		old, both := g.fields[k]
		if both && (isObject(old) || isObject(v)) {
			return false
		}
		if both {
			size += len(v) - len(old)
		} else {
			size += len(quote(k)) + 1 + len(v) + 1 // "k":v and a comma
		}
	}
	if size > g.limit {
		return false
	}
	for k, v := range m {
		g.fields[k] = v
	}
	g.size, g.n = size, g.n+1
	return true
}

// Len is how many updates the group holds.
func (g *Group) Len() int { return g.n }

// Body is the merged body as compact JSON, keys sorted.
func (g *Group) Body() json.RawMessage {
	keys := make([]string, 0, len(g.fields))
	for k := range g.fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	b.Grow(g.size)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(quote(k))
		b.WriteByte(':')
		b.Write(g.fields[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

// fields are body's top-level keys with their values, compacted; ok is false if body is not
// a JSON object.
func fields(body json.RawMessage) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return nil, false
	}
	for k, v := range m {
		var c bytes.Buffer
		if err := json.Compact(&c, v); err == nil {
			m[k] = c.Bytes()
		}
	}
	return m, true
}

func isObject(v json.RawMessage) bool { return len(v) > 0 && v[0] == '{' }

func quote(k string) []byte {
	b, _ := json.Marshal(k)
	return b
}

// sizeOf is the length of m as compact JSON.
func sizeOf(m map[string]json.RawMessage) int {
	n := 2 // braces
	for k, v := range m {
		n += len(quote(k)) + 1 + len(v) + 1
	}
	if len(m) > 0 {
		n-- // no comma after the last
	}
	return n
}
