package cluster

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/cluster/logdb"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func chainStats(n *Node) fsm.ChainStats {
	var total fsm.ChainStats
	for _, s := range n.shards {
		c := s.fsm.ChainStats()
		total.Verified += c.Verified
		total.Mismatched += c.Mismatched
		total.Unverifiable += c.Unverifiable
	}
	return total
}

// A replica whose log holds a different entry than its peers' at a committed
// index (here: rewritten on disk while the node was down) applies it on
// restart, and the leader's next checkpoint says so on that replica only.
func TestCheckpointDetectsACorruptedReplica(t *testing.T) {
	tc := startCluster(t, 3, 1)
	tc.allowDivergence = true
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	submitN := func(n int, tenant string) {
		for i := 0; i < n; i++ {
			if _, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"true"}, Tenant: tenant}); err != nil {
				t.Fatal(err)
			}
		}
	}
	submitN(20, "chain")
	// Healthy replicas verify the leader's checkpoints.
	waitFor(t, 20*time.Second, "a verified checkpoint on every node", func() bool {
		for _, n := range tc.nodes {
			if chainStats(n).Verified == 0 {
				return false
			}
		}
		return true
	})
	f := followerOf(tc, tc.leader())
	lead := tc.nodes[tc.leader()]
	waitFor(t, 10*time.Second, "the follower to apply everything", func() bool {
		return tc.nodes[f].shards[0].fsm.AppliedIndex() >= lead.shards[0].fsm.AppliedIndex()
	})
	if err := tc.nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	corruptFirstSubmit(t, filepath.Join(tc.dirs[f], "raft.db"), 0)
	tc.restart(f)
	submitN(5, "chain-after")
	waitFor(t, 30*time.Second, "the corrupted replica to report divergence", func() bool {
		return chainStats(tc.nodes[f]).Mismatched > 0
	})
	for i, n := range tc.nodes {
		if i != f && chainStats(n).Mismatched != 0 {
			t.Fatalf("healthy node %d reports divergence: %+v", i, chainStats(n))
		}
	}
}

// corruptFirstSubmit rewrites, in place, the first submit of group id in a
// stopped node's log store: same index and term, another command.
func corruptFirstSubmit(t *testing.T, path string, id uint32) {
	t.Helper()
	db, err := logdb.Open(logdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st := db.Group(id)
	first, _ := st.FirstIndex()
	last, _ := st.LastIndex()
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := st.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		e := &internalpb.Entry{}
		if err := proto.Unmarshal(l.Data, e); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range e.GetCommands() {
			if sub := cmd.GetSubmit(); sub != nil {
				sub.GetSpecs()[0].Command = []string{"corrupted"}
				if l.Data, err = proto.Marshal(e); err != nil {
					t.Fatal(err)
				}
				if err := st.StoreLogs([]*raft.Log{&l}); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatal("no submit found in the log")
}
