package queue_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

func TestRoles(t *testing.T) {
	t.Parallel()

	t.Run("status sees which replica is active and a replica that stops drops out", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startReplica(t, "a", url, top, true)
		b := startReplica(t, "b", url, top, true)
		ctx := context.Background()
		roles, err := queue.BindRoles(ctx, js, top, false)
		if err != nil {
			t.Fatalf("the roles bucket Ensure made: %v", err)
		}

		// Two publishers in one process: they differ by pid, so fake the second one's.
		var wg sync.WaitGroup
		pubCtx, stopPubs := context.WithCancel(ctx)
		defer func() { stopPubs(); wg.Wait() }()
		stopA := publishRoles(t, &wg, pubCtx, roles, a, "a")
		changes := make(chan queue.PinRole, 10)
		_ = publishRoles(t, &wg, pubCtx, roles, b, "b", func(r queue.PinRole) { changes <- r })

		publishN(t, js, top, "c", 1)
		active, _ := activeOf(t, a, b)
		var list []queue.ReplicaRole
		testwait.Until(t, "status to show one active and one standby", 10*time.Second, func() bool {
			st, err := queue.ReadStatus(ctx, js, top, nil)
			if err != nil || st.RolesRead != nil {
				return false
			}
			list = st.Replicas
			return len(list) == 2 && list[0].Role == queue.RoleActive && list[1].Role == queue.RoleStandby &&
				st.Pinned && st.PinID != "" && list[0].PinID == st.PinID
		})
		if want := active.p.Role().PinID; list[0].PinID != want {
			t.Errorf("the active entry has pin %q, the active replica %q", list[0].PinID, want)
		}
		if list[0].Host == "" || list[0].PID == 0 || list[0].Since.IsZero() || list[0].Version != "test" {
			t.Errorf("active entry incomplete: %+v", list[0])
		}
		if first := testwait.Recv(t, "b's OnChange at start", 5*time.Second, changes); first.Active {
			t.Error("OnChange at start says active before any message arrived")
		}
		if active == b {
			if r := testwait.Recv(t, "b's OnChange on becoming active", 5*time.Second, changes); !r.Active {
				t.Errorf("OnChange after b was pinned: %+v", r)
			}
		}

		stopA()
		testwait.Until(t, "a stopped publisher's entry to be removed", 5*time.Second, func() bool {
			l, err := roles.List(ctx)
			return err == nil && len(l) == 1
		})
	})

	t.Run("status without a roles bucket lists no replica", func(t *testing.T) {
		srv := queuetest.StartServer(t)
		_, js := queuetest.Connect(t, srv.URL())
		top := queue.Topology{RolesBucket: "NOT_THERE"}.WithDefaults()
		got, err := queue.ReadRoles(context.Background(), js, top)
		if err != nil || len(got) != 0 {
			t.Fatalf("ReadRoles without bucket = %v, %v; want none, nil", got, err)
		}
	})
}

// publishRoles runs a RolePublisher for r until the returned stop or ctx ends.
func publishRoles(t *testing.T, wg *sync.WaitGroup, ctx context.Context, roles *queue.Roles, r *replica, name string, onChange ...func(queue.PinRole)) (stop func()) {
	t.Helper()
	rp := &queue.RolePublisher{Roles: roles, Pin: r.p, Version: "test"}
	rp.SetProcess(fmt.Sprintf("%s-host", name), os.Getpid())
	if len(onChange) > 0 {
		rp.OnChange = onChange[0]
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	wg.Go(func() { defer close(done); _ = rp.Run(pctx) })
	return func() { cancel(); <-done }
}
