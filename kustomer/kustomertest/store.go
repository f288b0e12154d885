package kustomertest

import (
	"encoding/json"
	"fmt"
	"hash/maphash"
	"maps"
	"sync"
)

// conversation is the fake's copy of one Kustomer conversation. attrs is never modified
// after it is stored (updates store a new map), so it can be read outside the lock.
type conversation struct {
	rev   int64
	attrs map[string]any
}

type shard struct {
	mu      sync.Mutex
	convs   map[string]*conversation
	scripts map[string][]Answer
	rejects map[string]int
}

const shardCount = 64

// store holds conversations, per-id scripts and rejections, sharded by id so that requests
// for different conversations rarely contend.
type store struct {
	seed        maphash.Seed
	shards      [shardCount]shard
	mergeNested bool // Config.MergeNested
}

func newStore(mergeNested bool) *store {
	st := &store{seed: maphash.MakeSeed(), mergeNested: mergeNested}
	for i := range st.shards {
		st.shards[i] = shard{
			convs:   make(map[string]*conversation),
			scripts: make(map[string][]Answer),
			rejects: make(map[string]int),
		}
	}
	return st
}

func (st *store) shard(id string) *shard {
	return &st.shards[maphash.String(st.seed, id)%shardCount]
}

func (st *store) seedConversation(id string, attrs map[string]any) {
	normalized, rev := normalizeSeed(attrs)
	sh := st.shard(id)
	sh.mu.Lock()
	sh.convs[id] = &conversation{rev: rev, attrs: normalized}
	sh.mu.Unlock()
}

// normalizeSeed turns attrs into what an update with that body would store: a deep copy
// with JSON types (float64, []any, map[string]any). A "rev" sets the starting rev.
func normalizeSeed(attrs map[string]any) (map[string]any, int64) {
	b, err := json.Marshal(attrs)
	if err != nil {
		panic(fmt.Sprintf("kustomertest: Seed attributes are not JSON: %v", err))
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		m = map[string]any{}
	}
	var rev int64
	if r, ok := m["rev"].(float64); ok {
		rev = int64(r)
	}
	delete(m, "rev")
	return m, rev
}

// get returns the conversation's rev and (shared, read-only) attributes.
func (st *store) get(id string) (rev int64, attrs map[string]any, ok bool) {
	sh := st.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c, ok := sh.convs[id]
	if !ok {
		return 0, nil, false
	}
	return c.rev, c.attrs, true
}

// apply merges body into the conversation (or replaces its attributes), creating it if
// needed, and returns the new rev and attributes (shared, read-only).
func (st *store) apply(id string, body map[string]any, replace bool) (int64, map[string]any) {
	delete(body, "rev")
	sh := st.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.convs[id]
	if c == nil {
		c = &conversation{}
		sh.convs[id] = c
	}
	var next map[string]any
	if replace {
		next = make(map[string]any, len(body)+1)
		// A conversation always belongs to a customer: replacing keeps it unless the body
		// moves the conversation.
		if cust, ok := c.attrs["customer"]; ok {
			next["customer"] = cust
		}
	} else {
		next = make(map[string]any, len(c.attrs)+len(body))
		maps.Copy(next, c.attrs)
	}
	if st.mergeNested && !replace {
		for k, v := range body {
			next[k] = mergeValue(next[k], v)
		}
	} else {
		maps.Copy(next, body)
	}
	c.attrs = next
	c.rev++
	return c.rev, next
}

func (st *store) count() int {
	n := 0
	for i := range st.shards {
		sh := &st.shards[i]
		sh.mu.Lock()
		n += len(sh.convs)
		sh.mu.Unlock()
	}
	return n
}

func (st *store) script(id string, answers []Answer) {
	sh := st.shard(id)
	sh.mu.Lock()
	sh.scripts[id] = append(sh.scripts[id], answers...)
	sh.mu.Unlock()
}

// nextScript pops the next scripted answer for id.
func (st *store) nextScript(id string) (Answer, bool) {
	sh := st.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	q := sh.scripts[id]
	if len(q) == 0 {
		return Answer{}, false
	}
	a := q[0]
	if len(q) == 1 {
		delete(sh.scripts, id)
	} else {
		sh.scripts[id] = q[1:]
	}
	return a, true
}

func (st *store) reject(id string, status int) {
	sh := st.shard(id)
	sh.mu.Lock()
	if status == 0 {
		delete(sh.rejects, id)
	} else {
		sh.rejects[id] = status
	}
	sh.mu.Unlock()
}

func (st *store) rejection(id string) (int, bool) {
	sh := st.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	status, ok := sh.rejects[id]
	return status, ok
}

// deepCopy copies a value decoded from JSON.
func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = deepCopy(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = deepCopy(x)
		}
		return s
	}
	return v
}

// validID reports whether id looks like a Kustomer id: 24 lowercase hex characters.
func validID(id string) bool {
	if len(id) != 24 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// mergeValue is v sent over old, with Config.MergeNested: objects merged key by key,
// recursively, anything else replaced. old is never modified.
func mergeValue(old, v any) any {
	nv, ok := v.(map[string]any)
	ov, was := old.(map[string]any)
	if !ok || !was {
		return v
	}
	m := maps.Clone(ov)
	for k, x := range nv {
		m[k] = mergeValue(m[k], x)
	}
	return m
}
