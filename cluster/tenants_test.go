package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// sameShardTenants returns a, and a tenant name that hashes to a's shard.
func sameShardTenants(t *testing.T, a string, shards int) (string, string) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		b := fmt.Sprintf("light-%d", i)
		if ShardOf(b, shards) == ShardOf(a, shards) {
			return a, b
		}
	}
	t.Fatal("no tenant name found on the same shard")
	return "", ""
}

// metaLeader returns the index of the node leading the meta group, or -1.
func (tc *testCluster) metaLeader() int {
	for i, n := range tc.nodes {
		if n != nil && n.meta.raft.State() == raft.Leader {
			return i
		}
	}
	return -1
}

// shardLeader returns the index of the node leading shard sh, or -1.
func (tc *testCluster) shardLeader(sh uint32) int {
	for i, n := range tc.nodes {
		if n != nil && n.shards[sh].isLeader() {
			return i
		}
	}
	return -1
}

// waitWeight waits until every live replica of the tenant's shard applies weight.
func (tc *testCluster) waitWeight(tenant string, weight uint32) {
	tc.t.Helper()
	sh := ShardOf(tenant, tc.shards)
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		waitFor(tc.t, 20*time.Second, fmt.Sprintf("node %s shard %d to apply weight %s=%d", n.cfg.NodeID, sh, tenant, weight), func() bool {
			return n.shards[sh].fsm.TenantWeight(tenant) == weight
		})
	}
}

// leaseShare leases n jobs (long leases: nothing expires meanwhile), at
// most capacity per call, and counts them per tenant.
//
// A call keeps its request id until it returns leases. A lease that a node
// forwards to the shard's leader (work stealing) has a short deadline of
// its own; when it passes, the node answers with no leases although the
// leader may still grant them, and those jobs would be leased to nobody
// the test knows of, shifting the counts. Retried under the same id, the
// leader's request dedup returns that grant instead of picking new jobs.
// (The backlog is never drained here, so a granted lease is never empty.)
func leaseShare(t *testing.T, ctx context.Context, c *client.Client, n int, capacity int32) map[string]int {
	t.Helper()
	got := map[string]int{}
	rid := client.NewRequestID()
	empty := 0
	for leased := 0; leased < n; {
		resp, err := c.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w", Capacity: min(capacity, int32(n-leased)), TtlMs: 10 * 60 * 1000, RequestId: rid})
		if err != nil {
			t.Fatalf("lease %d of %d (after %d empty replies): %v", leased, n, empty, err)
		}
		if len(resp.GetLeases()) == 0 {
			empty++
			continue // same id: see above; ctx bounds the loop
		}
		for _, l := range resp.GetLeases() {
			got[l.GetJob().GetSpec().GetTenant()]++
			leased++
		}
		rid = client.NewRequestID()
	}
	if empty > 0 {
		t.Logf("leaseShare: %d empty replies retried", empty)
	}
	return got
}

// setTenant sets a weight through the API. The reply carries the weight the
// shard applies on the replying node: the new one, unless the call waited
// its whole setTenantWait for it (a loaded machine; waitWeight then waits
// for every replica). It never replies early with the old weight.
func setTenant(t *testing.T, ctx context.Context, c *client.Client, tenant string, weight, sh uint32) {
	t.Helper()
	start := time.Now()
	st, err := c.SetTenant(ctx, tenant, weight)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("SetTenant(%s, %d): %v", tenant, weight, err)
	}
	if st.GetTenant() != tenant || st.GetWeight() != weight || st.GetShard() != sh {
		t.Fatalf("SetTenant(%s, %d) reply %v", tenant, weight, st)
	}
	if st.GetShardWeight() != weight {
		if took < setTenantWait {
			t.Fatalf("SetTenant(%s, %d) replied after %v with shard weight %d: it should wait up to %v for the shard to apply the weight", tenant, weight, took, st.GetShardWeight(), setTenantWait)
		}
		t.Logf("SetTenant(%s, %d): the shard had not applied the weight after %v", tenant, weight, took)
	}
}

func backlog(t *testing.T, ctx context.Context, c *client.Client, n int, tenants ...string) {
	t.Helper()
	var specs []*hodeiv1.JobSpec
	for i := 0; i < n; i++ {
		for _, tn := range tenants {
			specs = append(specs, &hodeiv1.JobSpec{Tenant: tn, Command: []string{"true"}})
		}
	}
	if _, err := c.SubmitBatch(ctx, specs); err != nil {
		t.Fatal(err)
	}
}

// TestTenantWeights: a weight set through the API on a node that leads
// neither the meta group nor the shard reaches every replica of the
// tenant's shard; with weights 3 and 1 and both tenants backlogged on that
// shard, leases go 3:1; the weight survives the shard leader's death;
// invalid input is refused and changes nothing.
func TestTenantWeights(t *testing.T) {
	const shards = 2
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tc := startCluster(t, 3, shards)
	heavy, light := sameShardTenants(t, "heavy", shards)
	sh := ShardOf(heavy, shards)

	// A node that does not lead the meta group, and if possible not the
	// shard either: the call is forwarded to the meta leader, and the
	// weight is proposed by yet another node.
	via := -1
	for i := range tc.nodes {
		if i == tc.metaLeader() {
			continue
		}
		if via < 0 || i != tc.shardLeader(sh) {
			via = i
		}
	}
	t.Logf("meta leader n%d, shard %d leader n%d, calls via n%d", tc.metaLeader()+1, sh, tc.shardLeader(sh)+1, via+1)
	c := newClient(t, tc.peers[via].Addr)

	// Invalid input: InvalidArgument, nothing changes anywhere.
	for _, bad := range []struct {
		tenant string
		weight uint32
		want   string
	}{
		{"", 2, "tenant is required"},
		{heavy, 0, "outside 1..1000"},
		{heavy, 1001, "outside 1..1000"},
		{"two words", 2, "must match"},
	} {
		_, err := c.SetTenant(ctx, bad.tenant, bad.weight)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("SetTenant(%q, %d): %v, want InvalidArgument mentioning %q", bad.tenant, bad.weight, err, bad.want)
		}
	}
	if list, err := c.ListTenants(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after invalid input: tenants %v, %v", list, err)
	}
	for _, n := range tc.nodes {
		if len(n.meta.fsm.Tenants()) != 0 || len(n.shards[sh].fsm.TenantWeights()) != 0 {
			t.Fatalf("node %s changed: meta %v, shard %v", n.cfg.NodeID, n.meta.fsm.Tenants(), n.shards[sh].fsm.TenantWeights())
		}
	}

	setTenant(t, ctx, c, heavy, 3, sh)
	tc.waitWeight(heavy, 3)
	list, err := newClient(t, tc.addrs()...).ListTenants(ctx)
	if err != nil || len(list) != 1 || list[0].GetTenant() != heavy || list[0].GetWeight() != 3 || list[0].GetShardWeight() != 3 {
		t.Fatalf("ListTenants: %v, %v", list, err)
	}

	// Both backlogged on the same shard: 3:1, exactly (deficit round robin).
	backlog(t, ctx, c, 100, heavy, light) // heavy: 30+30+4 leased below
	if got := leaseShare(t, ctx, c, 40, 4); got[heavy] != 30 || got[light] != 10 {
		t.Fatalf("leased %v, want %s 30 and %s 10", got, heavy, light)
	}

	// The shard's leader dies: the new leader's replica has the weight (it
	// is replicated state, not the leader's memory).
	// (Wait for one: under load an election may be under way, and
	// shardLeader would return -1.)
	ld := -1
	waitFor(t, 30*time.Second, "the shard's leader", func() bool { ld = tc.shardLeader(sh); return ld >= 0 })
	tc.nodes[ld].Kill()
	tc.nodes[ld] = nil
	var live []string
	for i, p := range tc.peers {
		if i != ld {
			live = append(live, p.Addr)
		}
	}
	waitFor(t, 30*time.Second, "a new leader of the shard", func() bool {
		nl := tc.shardLeader(sh)
		return nl >= 0 && nl != ld && tc.nodes[nl].shards[sh].readyTerm.Load() == tc.nodes[nl].shards[sh].raft.CurrentTerm()
	})
	nl := tc.shardLeader(sh)
	if w := tc.nodes[nl].shards[sh].fsm.TenantWeight(heavy); w != 3 {
		t.Fatalf("new leader n%d applies weight %d", nl+1, w)
	}
	c2 := newClient(t, live...)
	if got := leaseShare(t, ctx, c2, 40, 3); got[heavy] != 30 || got[light] != 10 {
		t.Fatalf("after the leader change: leased %v, want %s 30 and %s 10", got, heavy, light)
	}

	// Back to the default weight: round robin again.
	setTenant(t, ctx, c2, heavy, 1, sh)
	tc.waitWeight(heavy, 1)
	if got := leaseShare(t, ctx, c2, 8, 8); got[heavy] != 4 || got[light] != 4 {
		t.Fatalf("with weight 1: leased %v", got)
	}
}

// TestTenantWeightsAfterRestore: a backup whose shard parts hold other
// weights than its meta part (the shards were saved after a change the meta
// part predates) is restored; every replica of the shard ends with the
// meta group's weight.
func TestTenantWeightsAfterRestore(t *testing.T) {
	const shards = 2
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src := startCluster(t, 1, shards)
	c := newClient(t, src.addrs()...)
	const tenant = "alpha"
	sh := ShardOf(tenant, shards)
	if _, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.SetTenant(ctx, tenant, 3); err != nil || st.GetShardWeight() != 3 {
		t.Fatalf("SetTenant: %v %v", st, err)
	}
	first, err := ParseArchive(saveArchive(t, ctx, src.addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.SetTenant(ctx, tenant, 7); err != nil || st.GetShardWeight() != 7 {
		t.Fatalf("SetTenant: %v %v", st, err)
	}
	second, err := ParseArchive(saveArchive(t, ctx, src.addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	// Meta part of the first backup (alpha=3), shard parts of the second (alpha=7).
	secs := append([]ArchiveSection{first.Sections[0]}, second.Sections[1:]...)
	var mixed bytes.Buffer
	if _, _, err := WriteArchive(&mixed, second.Header, secs); err != nil {
		t.Fatal(err)
	}
	if g := partWeight(t, second.Sections[1+sh].Data, sh, tenant); g != 7 {
		t.Fatalf("the shard part holds weight %d, want 7", g)
	}

	dst := startCluster(t, 3, shards)
	if _, err := restoreArchive(t, ctx, dst.addrs()[0], mixed.Bytes(), false); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	for _, n := range dst.nodes {
		waitFor(t, 30*time.Second, "node "+n.cfg.NodeID+" to hold the restored meta setting", func() bool { return n.meta.fsm.TenantWeight(tenant) == 3 })
	}
	dst.waitWeight(tenant, 3)
	t.Logf("every replica applies the meta group's weight %v after the restore", time.Since(restored))
	list, err := newClient(t, dst.addrs()...).ListTenants(ctx)
	if err != nil || len(list) != 1 || list[0].GetWeight() != 3 {
		t.Fatalf("ListTenants after restore: %v %v", list, err)
	}
}

// partWeight returns the weight a shard part (a shard FSM snapshot) holds
// for tenant.
func partWeight(t *testing.T, part []byte, sh uint32, tenant string) uint32 {
	t.Helper()
	cfg := DefaultConfig().FSM
	cfg.Shard = sh
	f, err := fsm.New(cfg, fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(part))); err != nil {
		t.Fatal(err)
	}
	return f.TenantWeight(tenant)
}
