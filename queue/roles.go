package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Role publication: the pin id appears only in message headers, so the replicas say
// themselves which of them is active, each in an entry of the roles bucket that expires
// unless refreshed: a replica that died drops out after RolesTTL.

// Tuned times of role publication.
const (
	RolesTTL         = 15 * time.Second // an entry not refreshed for this long expires (the bucket's MaxAge)
	RolesRefresh     = 5 * time.Second  // how often a replica refreshes its entry
	roleWriteTimeout = 3 * time.Second
)

// Role names.
const (
	RoleActive  = "active"  // the server hands this replica the messages
	RoleStandby = "standby" // waiting to take over
)

// ReplicaRole is what a replica publishes about itself.
type ReplicaRole struct {
	ID      string `json:"id"`               // the entry's key: host and pid
	Role    string `json:"role"`             // RoleActive or RoleStandby
	Shared  bool   `json:"shared"`           // the consumer has no pinned priority group: every replica is active
	Host    string `json:"host"`             // os.Hostname
	PID     int    `json:"pid"`              // process id
	Version string `json:"version"`          // the worker's version
	PinID   string `json:"pin_id,omitempty"` // the live lane's pin it holds
	// BackfillPinID is the backfill lane's pin it holds: while no replica holds the live
	// lane's pin, the one holding this is the active one (see Follower).
	BackfillPinID string `json:"backfill_pin_id,omitempty"`
	// BulkLane is the lane whose partial updates this replica sends in bulk jobs; "" when it
	// runs without bulk mode.
	BulkLane string    `json:"bulk_lane,omitempty"`
	Since    time.Time `json:"since"`   // when the replica took this role
	Updated  time.Time `json:"updated"` // when the entry was written
}

// Holds reports whether r published pin as one it holds, on either lane.
func (r ReplicaRole) Holds(pin string) bool {
	return pin != "" && (r.PinID == pin || r.BackfillPinID == pin)
}

// Roles is the roles bucket.
type Roles struct {
	kv jetstream.KeyValue
}

// rolesConfig is the bucket's configuration; Ensure creates it.
func (t Topology) rolesConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      t.RolesBucket,
		Description: "kustomer-worker replicas and their role (active, standby); entries expire unless refreshed",
		TTL:         RolesTTL,
		Storage:     jetstream.MemoryStorage, // only the present matters
		Replicas:    t.StreamReplicas,
	}
}

// BindRoles opens the roles bucket. With create, it creates the bucket when missing (Ensure
// does too); without, a missing bucket is an error matching jetstream.ErrBucketNotFound.
func BindRoles(ctx context.Context, js jetstream.JetStream, t Topology, create bool) (*Roles, error) {
	var (
		kv  jetstream.KeyValue
		err error
	)
	if create {
		kv, err = js.CreateOrUpdateKeyValue(ctx, t.rolesConfig())
	} else {
		kv, err = js.KeyValue(ctx, t.RolesBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", t.RolesBucket, err)
	}
	return &Roles{kv: kv}, nil
}

// ReplicaID is the key a process publishes its role under: host name and pid, in the
// characters a key may hold.
func ReplicaID(host string, pid int) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, host)
	return clean + "-" + strconv.Itoa(pid)
}

// Put writes r under r.ID.
func (rs *Roles) Put(ctx context.Context, r ReplicaRole) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = rs.kv.Put(ctx, r.ID, b)
	return err
}

// Remove deletes the entry of id, when a replica stops.
func (rs *Roles) Remove(ctx context.Context, id string) error {
	err := rs.kv.Delete(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

// List returns the replicas that published their role within RolesTTL, the active ones
// first, then by host and pid.
func (rs *Roles) List(ctx context.Context) ([]ReplicaRole, error) {
	w, err := rs.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var out []ReplicaRole
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		if e == nil { // every current entry was read
			break
		}
		var r ReplicaRole
		if json.Unmarshal(e.Value(), &r) != nil || time.Since(r.Updated) > RolesTTL {
			continue // not ours, or about to expire
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b ReplicaRole) int {
		if (a.Role == RoleActive) != (b.Role == RoleActive) {
			if a.Role == RoleActive {
				return -1
			}
			return 1
		}
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return a.PID - b.PID
	})
	return out, nil
}

// ReadRoles lists the replicas of t, for status; none when the bucket does not exist yet.
func ReadRoles(ctx context.Context, js jetstream.JetStream, t Topology) ([]ReplicaRole, error) {
	rs, err := BindRoles(ctx, js, t, false)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return rs.List(ctx)
}

// RolePublisher keeps this replica's entry in the roles bucket up to date: at start, at every
// role change of Pin, and every RolesRefresh; it removes the entry when it stops.
type RolePublisher struct {
	Roles *Roles
	Pin   *Pinned
	// Backfill, optional, is the backfill lane's consumer: while it holds the backfill pin
	// and no replica the live one, this replica is active too. Its changes are published at
	// the next refresh.
	Backfill *Follower
	Version  string
	BulkLane string // see ReplicaRole.BulkLane
	// OnChange, if set, is called from Run's goroutine with each new role, for logs and
	// metrics.
	OnChange func(PinRole)

	host string
	pid  int
}

// ID is the key this process publishes under.
func (rp *RolePublisher) ID() string {
	rp.init()
	return ReplicaID(rp.host, rp.pid)
}

// SetProcess names the process the entry describes, instead of this one's host name and pid
// (tests run several replicas in one process).
func (rp *RolePublisher) SetProcess(host string, pid int) { rp.host, rp.pid = host, pid }

func (rp *RolePublisher) init() {
	if rp.pid == 0 {
		rp.host, _ = os.Hostname()
		rp.pid = os.Getpid()
	}
}

// Run publishes until ctx ends, then removes the entry and returns. Failed writes are retried
// at the next refresh; a replica whose writes keep failing drops out of the list after
// RolesTTL, which is what status should show of a replica that cannot reach NATS.
func (rp *RolePublisher) Run(ctx context.Context) error {
	rp.init()
	id := ReplicaID(rp.host, rp.pid)
	t := time.NewTicker(RolesRefresh)
	defer t.Stop()
	seen := ^uint64(0)
	for {
		role := rp.Pin.Role()
		if n := rp.Pin.Changes(); n != seen {
			seen = n
			if rp.OnChange != nil {
				rp.OnChange(role)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, roleWriteTimeout)
		_ = rp.Roles.Put(wctx, rp.entry(id, role))
		cancel()
		// Wait for a tick or a change of role, whichever comes first.
		var change <-chan struct{}
		if role.Active {
			change = rp.Pin.Lost()
		} else {
			change = rp.Pin.Gained()
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), roleWriteTimeout)
			_ = rp.Roles.Remove(rctx, id)
			cancel()
			return nil
		case <-t.C:
		case <-change:
		}
	}
}

func (rp *RolePublisher) entry(id string, role PinRole) ReplicaRole {
	r := ReplicaRole{
		ID: id, Role: RoleStandby, Shared: !role.Pinned, Host: rp.host, PID: rp.pid, Version: rp.Version,
		PinID: role.PinID, BulkLane: rp.BulkLane, Since: role.Since.UTC(), Updated: time.Now().UTC(),
	}
	if rp.Backfill != nil {
		r.BackfillPinID = rp.Backfill.Role().PinID
	}
	if role.Active || r.BackfillPinID != "" {
		r.Role = RoleActive
	}
	return r
}
