package coalesce_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker/coalesce"
)

type update struct {
	replace bool
	body    json.RawMessage
}

// apply is a model of Kustomer's PUT: a partial update sets the keys sent (arrays whole);
// nested objects are merged key by key when mergeNested, replaced whole otherwise (the
// unconfirmed point of KUSTOMER.md); replace=true replaces the document.
func apply(state map[string]any, u update, mergeNested bool) map[string]any {
	var body map[string]any
	if err := json.Unmarshal(u.body, &body); err != nil {
		panic(err)
	}
	next := map[string]any{}
	if !u.replace {
		maps.Copy(next, state)
	}
	for k, v := range body {
		if mergeNested {
			if nv, ok := v.(map[string]any); ok {
				if ov, ok := next[k].(map[string]any); ok {
					m := maps.Clone(ov)
					maps.Copy(m, nv)
					next[k] = m
					continue
				}
			}
		}
		next[k] = v
	}
	return next
}

// merged applies us as the pool would send them: each group the rule allows as one PUT.
func merged(us []update, limit int, mergeNested bool) (map[string]any, int) {
	state, units := map[string]any{}, 0
	for i := 0; i < len(us); {
		g, ok := coalesce.Start(us[i].replace, us[i].body, limit)
		if !ok {
			state = apply(state, us[i], mergeNested)
			units++
			i++
			continue
		}
		j := i + 1
		for j < len(us) && g.Add(us[j].replace, us[j].body) {
			j++
		}
		if g.Len() != j-i {
			panic("Len disagrees")
		}
		body := g.Body()
		if len(body) > limit && j-i > 1 {
			panic(fmt.Sprintf("merged body of %d bytes over the limit %d", len(body), limit))
		}
		state = apply(state, update{body: body}, mergeNested)
		units++
		i = j
	}
	return state, units
}

func randomUpdate(r *rand.Rand) update {
	if r.IntN(30) == 0 {
		return update{body: json.RawMessage(fmt.Sprintf(`{"customer":"%024x"}`, 1+r.IntN(3)))}
	}
	body := map[string]any{}
	for range 1 + r.IntN(3) {
		switch r.IntN(7) {
		case 0:
			body["name"] = fmt.Sprintf("n%d", r.IntN(5))
		case 1:
			body["status"] = []string{"open", "snoozed", "done"}[r.IntN(3)]
		case 2:
			body["priority"] = 1 + r.IntN(5)
		case 3:
			tags := []string{}
			for range r.IntN(3) {
				tags = append(tags, fmt.Sprintf("t%d", r.IntN(4)))
			}
			body["tags"] = tags
		case 4:
			body["assignedUsers"] = []string{fmt.Sprintf("u%d", r.IntN(4))}
		case 5:
			obj := map[string]any{}
			for range 1 + r.IntN(2) {
				obj[fmt.Sprintf("f%d", r.IntN(3))] = r.IntN(3)
			}
			body["custom"] = obj
		case 6:
			if r.IntN(2) == 0 {
				body["custom"] = nil
			} else {
				body["note"] = nil
			}
		}
	}
	b, _ := json.Marshal(body)
	return update{replace: r.IntN(25) == 0, body: b}
}

// TestMergedEqualsSequential is the rule's property: random sequences of updates, merged by
// the rule, leave the same state as applying each alone in order, under both readings of
// nested objects, and never spend more requests.
func TestMergedEqualsSequential(t *testing.T) {
	for _, mergeNested := range []bool{false, true} {
		t.Run(fmt.Sprintf("nested objects merged=%v", mergeNested), func(t *testing.T) {
			r := rand.New(rand.NewPCG(27, uint64(len(t.Name()))))
			saved := 0
			for n := range 3000 {
				us := make([]update, 1+r.IntN(12))
				for i := range us {
					us[i] = randomUpdate(r)
				}
				limit := 1 << 20
				if n%3 == 0 {
					limit = 40 + r.IntN(60) // small: the limit must cut groups
				}
				want := map[string]any{}
				for _, u := range us {
					want = apply(want, u, mergeNested)
				}
				got, units := merged(us, limit, mergeNested)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("case %d: merged state %v, sequential %v; updates %s", n, got, want, show(us))
				}
				if units > len(us) {
					t.Fatalf("case %d: %d requests for %d updates", n, units, len(us))
				}
				saved += len(us) - units
			}
			if saved == 0 {
				t.Fatal("the rule never merged anything")
			}
		})
	}
}

func show(us []update) string {
	s := ""
	for _, u := range us {
		s += fmt.Sprintf(" replace=%v %s;", u.replace, u.body)
	}
	return s
}

func TestRule(t *testing.T) {
	const limit = 1 << 20
	t.Run("later values win and arrays are replaced whole", func(t *testing.T) {
		g, ok := coalesce.Start(false, json.RawMessage(`{"status":"open","tags":["a","b"]}`), limit)
		if !ok || !g.Add(false, json.RawMessage(`{"status":"done","tags":["c"],"priority":2}`)) {
			t.Fatal("two partial updates of scalars and arrays did not merge")
		}
		if got, want := string(g.Body()), `{"priority":2,"status":"done","tags":["c"]}`; got != want {
			t.Fatalf("body %s, want %s", got, want)
		}
	})
	t.Run("an object-valued key in both stops the merge", func(t *testing.T) {
		g, _ := coalesce.Start(false, json.RawMessage(`{"custom":{"a":1}}`), limit)
		if g.Add(false, json.RawMessage(`{"custom":{"b":2}}`)) {
			t.Fatal("merged two objects under one key")
		}
		if !g.Add(false, json.RawMessage(`{"name":"x"}`)) {
			t.Fatal("a key the group does not hold was refused")
		}
	})
	t.Run("a replace and a customer move go alone", func(t *testing.T) {
		if _, ok := coalesce.Start(true, json.RawMessage(`{"name":"x"}`), limit); ok {
			t.Fatal("a replace started a group")
		}
		if _, ok := coalesce.Start(false, json.RawMessage(`{"customer":"c"}`), limit); ok {
			t.Fatal("a customer move started a group")
		}
		g, _ := coalesce.Start(false, json.RawMessage(`{"name":"x"}`), limit)
		if g.Add(true, json.RawMessage(`{"name":"y"}`)) || g.Add(false, json.RawMessage(`{"customer":"c"}`)) {
			t.Fatal("a replace or a customer move joined a group")
		}
	})
	t.Run("never larger than the limit", func(t *testing.T) {
		g, _ := coalesce.Start(false, json.RawMessage(`{"name":"aaaaaaaaaa"}`), 40)
		if g.Add(false, json.RawMessage(`{"status":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}`)) {
			t.Fatalf("merged past the limit: %s", g.Body())
		}
	})
}

// TestMergedEqualsSequentialOnTheFake is the property against the fake Kustomer over HTTP,
// under both of its readings of nested objects: one conversation gets the updates alone,
// another the merged PUTs, and both end the same.
func TestMergedEqualsSequentialOnTheFake(t *testing.T) {
	for _, mergeNested := range []bool{false, true} {
		t.Run(fmt.Sprintf("MergeNested=%v", mergeNested), func(t *testing.T) {
			t.Parallel()
			fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, MergeNested: mergeNested, DiscardBodies: true})
			client, err := kustomer.New(kustomer.Options{BaseURL: fake.URL, Key: kustomer.StaticKey(kustomertest.DefaultAPIKey), Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(client.CloseIdleConnections)
			put := func(id string, u update) {
				t.Helper()
				if _, err := client.UpdateConversation(t.Context(), kustomer.Update{ID: id, Replace: u.replace, Body: u.body}); err != nil {
					t.Fatal(err)
				}
			}
			r := rand.New(rand.NewPCG(27, 2))
			for n := range 150 {
				alone, together := fmt.Sprintf("%024x", 2*n+1), fmt.Sprintf("%024x", 2*n+2)
				us := make([]update, 1+r.IntN(10))
				for i := range us {
					us[i] = randomUpdate(r)
					put(alone, us[i])
				}
				for i := 0; i < len(us); {
					g, ok := coalesce.Start(us[i].replace, us[i].body, kustomer.MaxBodyBytes)
					j := i + 1
					if !ok {
						put(together, us[i])
						i = j
						continue
					}
					for j < len(us) && g.Add(us[j].replace, us[j].body) {
						j++
					}
					put(together, update{body: g.Body()})
					i = j
				}
				a, _ := fake.Conversation(alone)
				b, _ := fake.Conversation(together)
				if !reflect.DeepEqual(a.Attributes, b.Attributes) {
					t.Fatalf("case %d: alone %v, merged %v; updates %s", n, a.Attributes, b.Attributes, show(us))
				}
			}
		})
	}
}
