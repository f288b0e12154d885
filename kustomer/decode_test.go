package kustomer

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

// decodeSeeds are inputs for the fuzz tests of the lexer: valid messages, and the near misses
// a hand-written lexer gets wrong.
var decodeSeeds = []string{
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"status":"open","priority":3,"tags":["a","b"],"custom":{"tierStr":"gold","seq":7}}}`,
	"{ \"id\" : \"5f3c9a1b2c3d4e5f60718293\" ,\n\t\"replace\": \"true\", \"body\" : { \"name\" : \"caf\u00e9 \\\"x\\\" \\u00e9\\ud83d\\ude00\\ud800\" } }\r\n",
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"satisfaction":-0.5e+10,"rev":2.0,"custom":{"a":[1,-0,0.1,1E5,true,false,null,{}],"b":[]}}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"priority":01}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"priority":1.}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"priority":-}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"name":"a` + "\x01" + `"}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"name":"\x"}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"tags":["a",]}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"tags":["a" "b"]}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"locked":truex}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"locked":nul}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{}} {}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"status":"open"}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"status":"open"}}]`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"status":"open",}}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293","body":{"status":"open"}`,
	`{"id":"5f3c9a1b2c3d4e5f60718293":"body"}`,
	`{"id" "5f3c9a1b2c3d4e5f60718293"}`,
	`{1:2}`,
	`[1,2,[3,{"a":[]}]]`,
	`"\ud800\udc00"`,
	`-`, `0`, `-0.0e-0`, `1e`, `.5`, `"`, `"\`, `nulll`, ``, ` `, `{`, `}`, `[`, `]`, `:`, `,`,
	`{"data":{"attributes":{"rev":12,"status":"open"}}}`,
	`{"Data":{"ATTRIBUTES":{"ReV":12}},"data":{"attributes":null}}`,
	`{"data":{"attributes":{"rev":12}},"data":{"attributes":{"rev":null}}}`,
	`{"data":{"attributes":{"rev":1.0}}}`,
	`{"data":{"attributes":{"rev":"12"}}}`,
	`{"data":[],"x":{"attributes":{"rev":3}}}`,
	`{"data":{"attributeſ":{"rev":4}}}`,
	`{"data":{"attributes":{"rev":99999999999999999999}}}`,
	`{"data":{"attributes":{"rev":-7}}} x`,
	`null`, `[{"data":1}]`,
}

// The lexer yields, for any input, the tokens and offsets json.Decoder yields, until it gives
// up; and it never reads to the end of input that json.Decoder refuses.
func FuzzLexer(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lex, dec := newLexer(data), newDecoder(data)
		for {
			got, lerr := lex.Token()
			if errors.Is(lerr, errLexer) {
				return
			}
			want, derr := dec.Token()
			if lerr == io.EOF {
				if derr != io.EOF {
					t.Fatalf("lexer ended where json.Decoder says %v, %v in %q", want, derr, data)
				}
				return
			}
			if derr != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("lexer: %#v; json.Decoder: %#v, %v in %q", got, want, derr, data)
			}
			if lex.InputOffset() != dec.InputOffset() {
				t.Fatalf("after %#v: lexer at %d, json.Decoder at %d in %q", got, lex.InputOffset(), dec.InputOffset(), data)
			}
		}
	})
}

// Whatever the lexer accepts, the reference accepts too, with the same result: the quick
// path changes nothing a caller of Decode, Validate or ValidateBody sees.
func FuzzQuickDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if u, err := decode(data, newLexer); err == nil {
			want, werr := decode(data, newDecoder)
			if werr != nil || !reflect.DeepEqual(u, want) {
				t.Fatalf("quick decode: %+v; reference: %+v, %v for %q", u, want, werr, data)
			}
		}
		if (Update{ID: "5f3c9a1b2c3d4e5f60718293", Body: data}).validate(newLexer) == nil {
			if err := (Update{ID: "5f3c9a1b2c3d4e5f60718293", Body: data}).validate(newDecoder); err != nil {
				t.Fatalf("quick validation accepts the body %q; reference: %v", data, err)
			}
		}
		var compact bytes.Buffer
		if json.Compact(&compact, data) == nil && !bytes.Equal(appendCompact(nil, data), compact.Bytes()) {
			t.Fatalf("appendCompact(%q) = %q; json.Compact: %q", data, appendCompact(nil, data), compact.Bytes())
		}
	})
}

// parseRev reads the rev of an answer as json.Unmarshal does, whatever the answer.
func FuzzParseRev(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := parseRev(data), unmarshalRev(data); got != want {
			t.Fatalf("parseRev(%q) = %d; json.Unmarshal reads %d", data, got, want)
		}
	})
}

// The answers of the Kustomer API carry the rev where parseRev finds it.
func TestParseRev(t *testing.T) {
	for _, tc := range []struct {
		body string
		want int64
	}{
		{`{"data":{"type":"conversation","id":"x","attributes":{"status":"open","rev":12,"custom":{"rev":3}}}}`, 12},
		{`{"data":{"attributes":{"rev":12}},"data":{"attributes":{"rev":null}}}`, 12},
		{`{"Data":{"Attributes":{"REV":5}}}`, 5},
		{`{"data":{"attributes":{"rev":1.5}}}`, 0},
		{`{"data":{"attributes":{"rev":12}}`, 0},
		{``, 0},
	} {
		if got := parseRev([]byte(tc.body)); got != tc.want {
			t.Errorf("parseRev(%s) = %d; want %d", tc.body, got, tc.want)
		}
	}
}

// BenchmarkLexer decodes a typical message (bench's update), with the lexer and with the
// reference json.Decoder.
func BenchmarkLexer(b *testing.B) {
	msg := []byte(`{"id":"000000000000000000000001","body":{"status":"open","priority":2,"tags":["5f3c9a1b2c3d4e5f6071a001","5f3c9a1b2c3d4e5f6071a002"],"custom":{"tierStr":"gold","seq":1}}}`)
	for _, tc := range []struct {
		name string
		open func([]byte) tokenReader
	}{{"lexer", newLexer}, {"reference", newDecoder}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decode(msg, tc.open); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseRev reads the rev of an answer of the fake.
func BenchmarkParseRev(b *testing.B) {
	answer := []byte(`{"data":{"attributes":{"custom":{"seq":1,"tierStr":"gold"},"priority":2,"rev":3,"status":"open","tags":["5f3c9a1b2c3d4e5f6071a001","5f3c9a1b2c3d4e5f6071a002"]},"id":"000000000000000000000001","type":"conversation"}}`)
	for _, tc := range []struct {
		name  string
		parse func([]byte) int64
	}{{"lexer", parseRev}, {"reference", unmarshalRev}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if tc.parse(answer) != 3 {
					b.Fatal("no rev")
				}
			}
		})
	}
}

// The quick paths are taken: the lexer decodes the valid seeds itself (a lexer that always
// gave up would leave every other test green, the reference decoding each message again), and
// revOf reads an answer's rev without falling back, allocating only its lexer.
func TestQuickPathsAreTaken(t *testing.T) {
	for _, s := range decodeSeeds[:3] {
		if _, err := decode([]byte(s), newLexer); err != nil {
			t.Errorf("the lexer gave up on a valid message %q: %v", s, err)
		}
	}
	answer := []byte(`{"data":{"type":"conversation","id":"x","attributes":{"status":"open","rev":12,"custom":{"rev":3}}}}`)
	if rev, ok := revOf(answer); rev != 12 || !ok {
		t.Errorf("revOf = %d, %v; want 12, read by the lexer", rev, ok)
	}
	if n := testing.AllocsPerRun(100, func() { revOf(answer) }); n > 1 {
		t.Errorf("revOf allocates %.0f times; want its lexer only", n)
	}
}
