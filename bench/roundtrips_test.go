package bench

import (
	"bytes"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// roundTrips counts, by kind, the NATS requests a connection sent that wait for an answer: the
// messages it published with a reply subject (a pull request, a JetStream API call, a
// confirmed acknowledgement, a publish to a stream). A plain acknowledgement, a mark of
// progress and a plain publish have none and are not counted. It reads the client protocol
// the connection writes (PUB and HPUB lines), so it counts what reached the server's socket
// whatever library call sent it.
type roundTrips struct {
	mu     sync.Mutex
	byKind map[string]int
}

// kindOf names a request by its subject.
func kindOf(subject string) string {
	for _, k := range []struct{ prefix, kind string }{
		{"$JS.API.CONSUMER.MSG.NEXT.", "pull"},
		{"$JS.API.CONSUMER.INFO.", "consumer info"},
		{"$JS.API.STREAM.MSG.GET.", "stream get"},
		{"$JS.API.STREAM.MSG.DELETE.", "stream delete"},
		{"$JS.API.DIRECT.GET.", "kv get"},
		{"$KV.", "kv put"},
		{"$JS.ACK.", "confirmed ack"},
		{"$JS.API.", "other api"},
	} {
		if strings.HasPrefix(subject, k.prefix) {
			return k.kind
		}
	}
	return "publish"
}

func (rt *roundTrips) add(subject string) {
	rt.mu.Lock()
	rt.byKind[kindOf(subject)]++
	rt.mu.Unlock()
}

// take returns the counts so far and starts again from zero.
func (rt *roundTrips) take() map[string]int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := rt.byKind
	rt.byKind = make(map[string]int)
	return out
}

// total of counts.
func total(counts map[string]int) int {
	n := 0
	for _, v := range counts {
		n += v
	}
	return n
}

// perUpdate writes counts divided by n, largest first: "pull 0.06, stream get 2.00".
func perUpdate(counts map[string]int, n int) string {
	kinds := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return counts[b] - counts[a] })
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, k+" "+strconv.FormatFloat(float64(counts[k])/float64(n), 'f', 3, 64))
	}
	return strings.Join(parts, ", ")
}

// Dial implements nats.CustomDialer.
func (rt *roundTrips) Dial(network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, rt: rt}, nil
}

// countingConn reads the client protocol written to a NATS server connection.
type countingConn struct {
	net.Conn
	rt   *roundTrips
	line []byte // the protocol line being written
	skip int    // bytes of a message body (and its CRLF) still to come
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.scan(b)
	return c.Conn.Write(b)
}

// scan follows the protocol through b: a line, and after PUB or HPUB the body whose size
// the line gives.
func (c *countingConn) scan(b []byte) {
	for len(b) > 0 {
		if c.skip > 0 {
			n := min(c.skip, len(b))
			c.skip -= n
			b = b[n:]
			continue
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			c.line = append(c.line, b...)
			return
		}
		c.line = append(c.line, b[:i]...)
		b = b[i+1:]
		c.command(strings.Fields(string(bytes.TrimSpace(c.line))))
		c.line = c.line[:0]
	}
}

// command counts a PUB or HPUB with a reply subject and sets the body to skip.
func (c *countingConn) command(f []string) {
	if len(f) < 3 {
		return
	}
	var args int // the arguments before the size(s): subject and maybe reply
	switch strings.ToUpper(f[0]) {
	case "PUB":
		args = len(f) - 2
	case "HPUB":
		args = len(f) - 3
	default:
		return
	}
	size, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		return
	}
	c.skip = size + 2
	if args == 2 { // subject and reply
		c.rt.add(f[1])
	}
}

// countedConn connects to the rig's server through a connection whose requests rt counts.
func (r *rig) countedConn(rt *roundTrips) (*nats.Conn, jetstream.JetStream) {
	r.tb.Helper()
	nc, err := nats.Connect(r.url, nats.SetCustomDialer(rt), nats.MaxReconnects(-1))
	if err != nil {
		r.tb.Fatal(err)
	}
	r.tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		r.tb.Fatal(err)
	}
	return nc, js
}

// The protocol scan must count a request split across writes, and skip bodies that look
// like commands.
func TestRoundTripsCountsRequestsOnly(t *testing.T) {
	rt := &roundTrips{byKind: make(map[string]int)}
	c := &countingConn{rt: rt}
	stream := "PUB $JS.ACK.s.c.1.2.3.4.5 5\r\n+ACK \r\n" + // a plain ack: no reply
		"PUB $JS.ACK.s.c.1.2.3.4.5 _INBOX.x 5\r\n+ACK \r\n" + // a confirmed ack
		"HPUB $JS.API.CONSUMER.MSG.NEXT.S.C _INBOX.y 12 36\r\nNATS/1.0\r\n\r\n{\"batch\":16,\"expires\":1}\r\n" +
		"PUB kustomer.conversations.update 20\r\nPUB x _INBOX.z 1\r\nab\r\n" + // a body that looks like a PUB
		"PING\r\nPUB $JS.API.STREAM.MSG.GET.S _INBOX.w 2\r\n{}\r\n"
	for i := 0; i < len(stream); i += 7 {
		c.scan([]byte(stream[i:min(i+7, len(stream))]))
	}
	got := rt.take()
	want := map[string]int{"confirmed ack": 1, "pull": 1, "stream get": 1}
	if !maps.Equal(got, want) {
		t.Errorf("counted %v; want %v", got, want)
	}
}
