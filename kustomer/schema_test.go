package kustomer_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// schemaPath is the JSON Schema of the message that producers in other languages validate with.
const schemaPath = "../schema/update-message.schema.json"

// schemaGaps are the rules of Decode that a JSON Schema cannot express, by the name the
// schema's description gives each in brackets.
var schemaGaps = []string{
	"duplicate-keys", "body-size", "utf-8", "number-range", "float64-rounding", "nesting-depth", "single-value",
}

// beyondSchema names the cases on which Decode and the schema are known to disagree, each with
// the gap that explains it. Every other case must get the same verdict from both, and every
// case listed here must really disagree, so the list cannot go stale.
var beyondSchema = map[string]string{
	"invalid UTF-8 is rejected":                            "utf-8",
	"a duplicate message field is rejected":                "duplicate-keys",
	"a duplicate body field is rejected":                   "duplicate-keys",
	"custom has no duplicate keys":                         "duplicate-keys",
	"body must fit MaxBodyBytes":                           "body-size",
	"a number must fit a float64":                          "number-range",
	"a decimal that rounds to 5 is an integer from 1 to 5": "float64-rounding",
}

// boundaryCases are messages at the edges of the translation into a schema, beyond the
// validation table: each says whether Decode accepts it.
var boundaryCases = []struct {
	name   string
	msg    string
	accept bool
}{
	{"replace null is a partial update", `{"id": "` + validID + `", "replace": null, "body": {"status": "done"}}`, true},
	{"replace \"false\" is a partial update", `{"id": "` + validID + `", "replace": "false", "body": {"status": "done"}}`, true},
	{"replace \"TRUE\" is rejected", `{"id": "` + validID + `", "replace": "TRUE", "body": {"status": "done"}}`, false},
	{"replace 1 is rejected", `{"id": "` + validID + `", "replace": 1, "body": {"status": "done"}}`, false},
	{"an uppercase id is valid", `{"id": "` + strings.ToUpper(validID) + `", "body": {"status": "done"}}`, true},
	{"an id with a trailing newline is rejected", `{"id": "` + validID[:23] + `\n", "body": {"status": "done"}}`, false},
	{"an id of 25 characters is rejected", `{"id": "` + validID + `0", "body": {"status": "done"}}`, false},
	{"an escaped id is decoded first", `{"id": "\u0035f3c9a1b2c3d4e5f60718293", "body": {"status": "done"}}`, true},
	{"priority 2.0 is an integer", message(`{"priority": 2.0}`), true},
	{"priority 5e0 is an integer", message(`{"priority": 5e0}`), true},
	{"a decimal that rounds to 5 is an integer from 1 to 5", message(`{"priority": 5.0000000000000001}`), true},
	{"score 1.0 is 1", message(`{"satisfactionLevel": {"createdAt": "x", "status": "rated", "score": 1.0}}`), true},
	{"polarity -0 is 0", message(`{"sentiment": {"polarity": -0, "confidence": 1}}`), true},
	{"rev may be negative", message(`{"rev": -3}`), true},
	{"ten assigned users are allowed", message(`{"assignedUsers": ` + ids(10) + `}`), true},
	{"an empty tag list removes the tags", message(`{"tags": []}`), true},
	{"custom may hold null", message(`{"custom": {"a": null, "b": [null]}}`), true},
	{"custom may be empty", message(`{"custom": {}}`), true},
	{"a customer move with a null neighbour is rejected", message(`{"customer": "` + validID + `", "name": null}`), false},
	{"a customer that is not an id is rejected", message(`{"customer": 5}`), false},
	{"a message that is a string is rejected", `"` + validID + `"`, false},
	{"white space around the message is allowed", " \n\t" + message(`{"status": "done"}`) + "\n ", true},
}

// compileSchema compiles the checked-in schema with a maintained draft 2020-12 validator.
func compileSchema(tb testing.TB) *jsonschema.Schema {
	tb.Helper()
	f, err := os.Open(schemaPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		tb.Fatalf("%s: %v", schemaPath, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(schemaPath, doc); err != nil {
		tb.Fatal(err)
	}
	sch, err := c.Compile(schemaPath)
	if err != nil {
		tb.Fatalf("compile %s: %v", schemaPath, err)
	}
	return sch
}

// schemaAccepts reports whether msg parses as one JSON value that the schema accepts, and why not.
func schemaAccepts(sch *jsonschema.Schema, msg []byte) (bool, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(msg))
	if err != nil {
		return false, err
	}
	if err := sch.Validate(v); err != nil {
		return false, err
	}
	return true, nil
}

// requireSameVerdict fails tb unless Decode and the schema both accept msg or both reject it.
// A case named in beyondSchema must instead get different verdicts.
func requireSameVerdict(tb testing.TB, sch *jsonschema.Schema, name string, msg []byte) {
	tb.Helper()
	_, decodeErr := kustomer.Decode(msg)
	schemaOK, schemaErr := schemaAccepts(sch, msg)
	if gap, ok := beyondSchema[name]; ok {
		if (decodeErr == nil) == schemaOK {
			tb.Fatalf("listed as beyond the schema ([%s]) but both give the same verdict (accept=%v): remove it from beyondSchema", gap, schemaOK)
		}
		tb.Logf("not compared: the schema cannot express [%s]; Decode: %v", gap, decodeErr)
		return
	}
	switch {
	case decodeErr == nil && !schemaOK:
		tb.Fatalf("Decode accepts, the schema rejects:\n%v\nmessage: %.300s", schemaErr, msg)
	case decodeErr != nil && schemaOK:
		tb.Fatalf("Decode rejects (%v), the schema accepts\nmessage: %.300s", decodeErr, msg)
	}
}

func TestSchemaNamesWhatItCannotExpress(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var top struct {
		Schema      string `json:"$schema"`
		Description string `json:"description"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	if top.Schema != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %q, want draft 2020-12", top.Schema)
	}
	for _, gap := range schemaGaps {
		if !strings.Contains(top.Description, "["+gap+"]") {
			t.Errorf("the schema's description does not list [%s]", gap)
		}
	}
	for name, gap := range beyondSchema {
		if !slices.Contains(schemaGaps, gap) {
			t.Errorf("case %q is excused by [%s], which schemaGaps does not list", name, gap)
		}
	}
}

func TestSchemaAgreesWithDecode(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	used := map[string]bool{}
	t.Run("on the validation table", func(t *testing.T) {
		for _, tc := range rejectCases {
			used[tc.name] = true
			t.Run(tc.name, func(t *testing.T) { requireSameVerdict(t, sch, tc.name, []byte(tc.msg)) })
		}
		for _, tc := range acceptCases {
			used[tc.name] = true
			t.Run(tc.name, func(t *testing.T) { requireSameVerdict(t, sch, tc.name, []byte(tc.msg)) })
		}
	})
	t.Run("on the boundaries of the translation", func(t *testing.T) {
		for _, tc := range boundaryCases {
			used[tc.name] = true
			t.Run(tc.name, func(t *testing.T) {
				if _, err := kustomer.Decode([]byte(tc.msg)); (err == nil) != tc.accept {
					t.Fatalf("Decode: %v, want accept=%v", err, tc.accept)
				}
				requireSameVerdict(t, sch, tc.name, []byte(tc.msg))
			})
		}
	})
	t.Run("on the fuzz corpus", func(t *testing.T) {
		files, err := filepath.Glob("testdata/fuzz/FuzzDecode/*")
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatal("no corpus in testdata/fuzz/FuzzDecode")
		}
		for _, file := range files {
			name := "corpus " + filepath.Base(file)
			used[name] = true
			t.Run(filepath.Base(file), func(t *testing.T) {
				requireSameVerdict(t, sch, name, readCorpusEntry(t, file))
			})
		}
	})
	for name := range beyondSchema {
		if !used[name] {
			t.Errorf("beyondSchema names %q, which is no case", name)
		}
	}
}

// readCorpusEntry reads one file of a go test fuzz corpus holding a single []byte argument.
func readCorpusEntry(tb testing.TB, file string) []byte {
	tb.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		tb.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" ||
		!strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
		tb.Fatalf("%s is not a go test fuzz v1 file of one []byte", file)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	return []byte(s)
}
