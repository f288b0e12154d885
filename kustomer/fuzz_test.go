package kustomer_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// FuzzDecode checks that Decode never panics, that every failure is a non-empty
// *ValidationError, and that every accepted message yields an Update that is safe to send:
// a valid id, a compact JSON object body within MaxBodyBytes, and a json.Marshal round trip.
// The checked-in corpus is in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"id": "5f3c9a1b2c3d4e5f60718293", "replace": false, "body": {"status": "done", "tags": ["vip"]}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"customer": "5F3C9A1B2C3D4E5F60718294"}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718293", "replace": "true", "body": {"priority": 2.0, "snooze": {"status": "scheduled"}}}`,
		`{"id": "../customers/5f3c9a1b2c3d", "body": {"custom": {"a": [1, {"b": null}], "a": 2}}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"satisfactionLevel": {"createdAt": "x", "status": "rated", "score": 1}, "sentiment": {"polarity": -1, "confidence": 0.5}}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"name": "<b>&amp;</b>\u2028", "suggestedTags": [{"tag": "t", "confidence": 1e2}]}}`,
		`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {}} {}`,
		`[{"id": null}]`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := kustomer.Decode(data)
		if err != nil {
			var ve *kustomer.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, kustomer.ErrInvalid) || len(ve.Problems) == 0 {
				t.Fatalf("Decode error %#v is not a non-empty *ValidationError", err)
			}
			for _, p := range ve.Problems {
				if p.Field == "" || p.Problem == "" {
					t.Fatalf("problem without field or text: %+v", p)
				}
			}
			if u.ID != "" || u.Body != nil || u.Replace {
				t.Fatalf("Decode returned %+v with its error", u)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("Decode accepted invalid JSON %q", data)
		}
		if !kustomer.ValidID(u.ID) {
			t.Fatalf("Decode accepted id %q", u.ID)
		}
		if len(u.Body) == 0 || u.Body[0] != '{' || len(u.Body) > kustomer.MaxBodyBytes || !json.Valid(u.Body) {
			t.Fatalf("Decode returned body %q", u.Body)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, u.Body); err != nil || !bytes.Equal(compact.Bytes(), u.Body) {
			t.Fatalf("body %q is not compact", u.Body)
		}
		if err := u.Validate(); err != nil {
			t.Fatalf("Validate rejects what Decode accepted: %v", err)
		}
		requireRoundTrip(t, u)
	})
}
