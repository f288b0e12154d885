package queue

import "strings"

// Lane is one of the work stream's two lanes. Both live in the one work stream, so that
// stream sequences order the messages of both; each has its own subjects and its own durable
// consumer, so that a worker can take live messages while a backfill waits.
type Lane string

const (
	// LaneLive carries updates from event producers as things happen (Topology.Subject). A
	// worker serves it first.
	LaneLive Lane = "live"
	// LaneBackfill carries bulk loads (Topology.BackfillSubject): it gets the budget the live
	// lane leaves.
	LaneBackfill Lane = "backfill"
)

// Lanes returns both lanes, the live one first.
func Lanes() []Lane { return []Lane{LaneLive, LaneBackfill} }

// Other returns the lane that is not l.
func (l Lane) Other() Lane {
	if l == LaneBackfill {
		return LaneLive
	}
	return LaneBackfill
}

// LaneSubject is lane l's bare subject: Subject or BackfillSubject.
func (t Topology) LaneSubject(l Lane) string {
	if l == LaneBackfill {
		return t.BackfillSubject
	}
	return t.Subject
}

// LaneSubjects are the subjects lane l takes: its bare subject and everything under it.
func (t Topology) LaneSubjects(l Lane) []string {
	s := t.LaneSubject(l)
	return []string{s, s + ".>"}
}

// LaneConsumer is the name of lane l's durable consumer: Consumer or BackfillConsumer.
func (t Topology) LaneConsumer(l Lane) string {
	if l == LaneBackfill {
		return t.BackfillConsumer
	}
	return t.Consumer
}

// ConversationSubject is the subject a producer uses for an update of conversation id in
// lane l: <lane subject>.<id>. Messages on such subjects can be found per conversation
// cheaply (see OrderCheck); messages on the bare subject cannot.
func (t Topology) ConversationSubject(l Lane, id string) string {
	return t.LaneSubject(l) + "." + id
}

// LaneOf tells which lane a subject belongs to; ok is false for a subject of neither.
func (t Topology) LaneOf(subject string) (l Lane, ok bool) {
	for _, l := range Lanes() {
		s := t.LaneSubject(l)
		if subject == s || strings.HasPrefix(subject, s+".") {
			return l, true
		}
	}
	return "", false
}

// ConversationOf returns the conversation id in a subject of the form <lane subject>.<id>;
// ok is false for a bare lane subject or a subject of neither lane.
func (t Topology) ConversationOf(subject string) (l Lane, id string, ok bool) {
	l, ok = t.LaneOf(subject)
	if !ok {
		return "", "", false
	}
	id = strings.TrimPrefix(subject, t.LaneSubject(l)+".")
	if id == subject || id == "" {
		return l, "", false
	}
	return l, id, true
}
