package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/producer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// These tests keep docs/PRODUCING.md true: every example in it is run or checked here.

const (
	producingDoc = "../docs/PRODUCING.md"
	schemaFile   = "../schema/update-message.schema.json"
)

// block is one fenced code block of a Markdown file.
type block struct {
	lang, text string
	line       int
}

// codeBlocks returns the fenced code blocks of the Markdown file at path.
func codeBlocks(tb testing.TB, path string) []block {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var (
		out  []block
		cur  *block
		text []string
	)
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{lang: strings.TrimPrefix(line, "```"), line: i + 1}
			text = nil
		case cur != nil && line == "```":
			cur.text = strings.Join(text, "\n")
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			text = append(text, line)
		}
	}
	if cur != nil {
		tb.Fatalf("%s: code block at line %d is not closed", path, cur.line)
	}
	return out
}

func blocksOf(tb testing.TB, lang string) []block {
	tb.Helper()
	var out []block
	for _, b := range codeBlocks(tb, producingDoc) {
		if b.lang == lang {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		tb.Fatalf("%s has no %s example", producingDoc, lang)
	}
	return out
}

func compileSchema(tb testing.TB) *jsonschema.Schema {
	tb.Helper()
	c := jsonschema.NewCompiler()
	sch, err := c.Compile(schemaFile)
	if err != nil {
		tb.Fatalf("compile %s: %v", schemaFile, err)
	}
	return sch
}

// requireValidMessage fails tb unless both the worker and the schema accept msg.
func requireValidMessage(tb testing.TB, sch *jsonschema.Schema, msg string) kustomer.Update {
	tb.Helper()
	u, err := kustomer.Decode([]byte(msg))
	if err != nil {
		tb.Fatalf("the worker rejects %s: %v", msg, err)
	}
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(msg))
	if err != nil {
		tb.Fatal(err)
	}
	if err := sch.Validate(v); err != nil {
		tb.Fatalf("the schema rejects %s: %v", msg, err)
	}
	return u
}

func TestProducingDocStatesTheContract(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(producingDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"`" + producer.DefaultSubject + ".<conversation id>`",
		"Header `" + jetstream.MsgIDHeader + "`",
		fmt.Sprintf("1 to %d printable ASCII characters", producer.MaxEventIDBytes),
		"(" + schemaFile + ")",
	} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("%s does not say %s", producingDoc, want)
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("(docs/PRODUCING.md)")) {
		t.Error("README.md does not point to docs/PRODUCING.md")
	}
}

func TestProducingDocJSONExamplesAreValidMessages(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	for _, b := range blocksOf(t, "json") {
		t.Run(fmt.Sprintf("line %d", b.line), func(t *testing.T) { requireValidMessage(t, sch, b.text) })
	}
}

func TestProducingDocGoExampleIsARunExample(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parser.ParseFile(fset, "example_test.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	trim := func(s string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			out = append(out, strings.TrimSpace(l))
		}
		return out
	}
	for _, b := range blocksOf(t, "go") {
		want := trim(b.text)
		found := false
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || !strings.HasPrefix(fn.Name.Name, "Example") || fn.Body == nil {
				continue
			}
			body := trim(string(src[fset.Position(fn.Body.Lbrace).Offset:fset.Position(fn.Body.Rbrace).Offset]))
			for i := 0; i+len(want) <= len(body); i++ {
				if slicesEqual(body[i:i+len(want)], want) {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("the Go example at %s:%d is not the body of an Example function in example_test.go", producingDoc, b.line)
		}
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// shellWords splits a command line of plain words and single-quoted strings, as a POSIX
// shell does.
func shellWords(tb testing.TB, line string) []string {
	tb.Helper()
	var (
		words []string
		cur   strings.Builder
		in    bool // a word has started
	)
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				tb.Fatalf("unclosed quote in %s", line)
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			in = true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case c == '"' || c == '\\' || c == '$' || c == '`':
			tb.Fatalf("the example uses %q, which this test does not interpret: %s", c, line)
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

func TestProducingDocNatsCLIExamplePublishesAValidMessage(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	f := setup(t, queue.Topology{})
	for _, b := range blocksOf(t, "sh") {
		words := shellWords(t, b.text)
		if len(words) < 2 || words[0] != "nats" || words[1] != "pub" {
			t.Fatalf("line %d: not a nats pub command: %s", b.line, b.text)
		}
		var (
			jetStream bool
			headers   = nats.Header{}
			args      []string
		)
		for i := 2; i < len(words); i++ {
			switch w := words[i]; {
			case w == "--jetstream" || w == "-J":
				jetStream = true
			case w == "--header" || w == "-H":
				i++
				k, v, ok := strings.Cut(words[i], ":")
				if !ok {
					t.Fatalf("header %q is not K:V", words[i])
				}
				headers.Add(k, v)
			case strings.HasPrefix(w, "-"):
				t.Fatalf("line %d: flag %s is not checked by this test", b.line, w)
			default:
				args = append(args, w)
			}
		}
		if !jetStream {
			t.Errorf("line %d: without --jetstream nats pub does not wait for the acknowledgement", b.line)
		}
		if len(args) != 2 {
			t.Fatalf("line %d: want a subject and a message, got %q", b.line, args)
		}
		subject, msg := args[0], args[1]
		u := requireValidMessage(t, sch, msg)
		if subject != producer.DefaultSubject+"."+u.ID {
			t.Errorf("line %d: subject %s, want %s.%s", b.line, subject, producer.DefaultSubject, u.ID)
		}
		if err := producer.CheckEventID(headers.Get(jetstream.MsgIDHeader)); err != nil {
			t.Errorf("line %d: %v", b.line, err)
		}
		// What nats pub --jetstream sends: a JetStream publish of these bytes and headers.
		ack, err := f.js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: []byte(msg), Header: headers})
		if err != nil {
			t.Fatalf("line %d: %v", b.line, err)
		}
		stored := f.stored(t)[ack.Sequence-1]
		if got, err := kustomer.Decode(stored.Data); err != nil || got.ID != u.ID || stored.Subject != subject {
			t.Errorf("stored %s on %s: %v", stored.Data, stored.Subject, err)
		}
	}
}

func TestProducingDocRequestRepliesAreJetStreamsAcks(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	var documented []any // the JSON value that starts each line, before its explanation
	for _, line := range strings.Split(blocksOf(t, "text")[0].text, "\n") {
		var v any
		if err := json.NewDecoder(strings.NewReader(line)).Decode(&v); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		documented = append(documented, v)
	}
	msg := &nats.Msg{
		Subject: producer.DefaultSubject + ".5f3c9a1b2c3d4e5f60718293",
		Data:    []byte(`{"id": "5f3c9a1b2c3d4e5f60718293", "body": {"status": "done"}}`),
		Header:  nats.Header{jetstream.MsgIDHeader: []string{"order-1234-shipped"}},
	}
	var got []any
	for range 2 { // stored, then the same event id again
		reply, err := f.nc.RequestMsg(msg, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(reply.Data, &v); err != nil {
			t.Fatalf("answer %s: %v", reply.Data, err)
		}
		got = append(got, v)
	}
	if !reflect.DeepEqual(got, documented) {
		t.Errorf("JetStream answers %v, the doc shows %v", got, documented)
	}
}
