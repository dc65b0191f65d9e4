package cluster

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

func readClusterFile(t *testing.T, dir string) clusterFile {
	t.Helper()
	var cf clusterFile
	b, err := os.ReadFile(filepath.Join(dir, clusterFileName))
	if err == nil {
		err = json.Unmarshal(b, &cf)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

// waitClusterID waits until every node of tc has recorded the cluster id in
// its data dir, and returns it.
func waitClusterID(t *testing.T, tc *testCluster) string {
	t.Helper()
	var id string
	waitFor(t, 20*time.Second, "the cluster id in every data dir", func() bool {
		id = tc.nodes[0].ClusterID()
		if id == "" {
			return false
		}
		for i := range tc.nodes {
			if tc.nodes[i].ClusterID() != id || readClusterFile(t, tc.dirs[i]).ClusterID != id {
				return false
			}
		}
		return true
	})
	return id
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// expectRefused starts a node with cfg and expects New to fail with an
// error containing want.
func expectRefused(t *testing.T, cfg Config, want string) {
	t.Helper()
	cfg.IdentityProbeTimeout = 5 * time.Second // every peer here is serving
	n, err := New(cfg)
	if err == nil {
		n.Close()
		t.Fatalf("node %s started; want an error containing %q", cfg.NodeID, want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("node %s: error %q, want one containing %q", cfg.NodeID, err, want)
	}
	t.Logf("refused as expected: %v", err)
}

func TestStartRefusesWrongIdentity(t *testing.T) {
	tc := startCluster(t, 3, 2)
	id := waitClusterID(t, tc)
	if cf := readClusterFile(t, tc.dirs[1]); cf.NodeID != "n2" || cf.Shards != 2 {
		t.Fatalf("cluster file of n2: %+v", cf)
	}
	st, err := tc.nodes[2].Status(context.Background(), &hodeiv1.StatusRequest{})
	if err != nil || st.GetClusterId() != id || st.GetMetaVersion() < 2 {
		t.Fatalf("status: %v %v", st, err)
	}
	before := tc.nodes[0].meta.raft.GetConfiguration().Configuration().Servers

	t.Run("another node's data dir", func(t *testing.T) {
		dir := t.TempDir()
		if err := writeClusterFile(dir, clusterFile{Format: 1, Shards: 2, NodeID: "n7"}); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, testConfig(t, "n8", dir, listen(t), nil, 2), `belongs to node "n7", not "n8"`)
	})
	t.Run("peer list names the wrong node", func(t *testing.T) {
		l := listen(t)
		peers := []Peer{{ID: "n9", Addr: l.Addr().String()}, {ID: "n2", Addr: tc.peers[0].Addr}, {ID: "n3", Addr: tc.peers[2].Addr}}
		expectRefused(t, testConfig(t, "n9", t.TempDir(), l, peers, 2), `lists "n2" at `+tc.peers[0].Addr+`, but the node there is "n1"`)
	})
	t.Run("two nodes with one id", func(t *testing.T) {
		l := listen(t)
		peers := []Peer{{ID: "n1", Addr: l.Addr().String()}, {ID: "n2", Addr: tc.peers[0].Addr}}
		expectRefused(t, testConfig(t, "n1", t.TempDir(), l, peers, 2), `two nodes have id "n1"`)
		// The same through the advertised address: the list puts n1 elsewhere.
		cfg := testConfig(t, "n1", t.TempDir(), listen(t), tc.peers, 2)
		cfg.Advertise = "127.0.0.1:1"
		expectRefused(t, cfg, "do two nodes have id")
	})
	t.Run("bootstrap with another peer list", func(t *testing.T) {
		l := listen(t)
		peers := []Peer{{ID: "n1", Addr: tc.peers[0].Addr}, {ID: "n2", Addr: tc.peers[1].Addr}, {ID: "n4", Addr: l.Addr().String()}}
		expectRefused(t, testConfig(t, "n4", t.TempDir(), l, peers, 2), "every bootstrap node needs the same peer list")
	})
	t.Run("join through a node that is not a member", func(t *testing.T) {
		cfg := testConfig(t, "x1", t.TempDir(), listen(t), nil, 2)
		cfg.Join = tc.addrs()
		loner, err := New(cfg) // started to join, never added
		if err != nil {
			t.Fatal(err)
		}
		defer loner.Close()
		cfg = testConfig(t, "x2", t.TempDir(), listen(t), nil, 2)
		cfg.Join = []string{loner.Addr()}
		expectRefused(t, cfg, "is not a member of a cluster")
	})
	t.Run("another cluster's data dir", func(t *testing.T) {
		other := startCluster(t, 1, 2)
		otherID := waitClusterID(t, other)
		if otherID == id {
			t.Fatal("two clusters got the same id")
		}
		// The other cluster's node asks to be added: refused by the cluster.
		err := tc.nodes[1].Join(context.Background(), &hodeiv1.JoinRequest{NodeId: "n1", Address: other.nodes[0].Addr(), Voter: true})
		if err == nil || !strings.Contains(err.Error(), "belongs to cluster "+otherID) {
			t.Fatalf("join of a foreign node: %v", err)
		}
		if c := status.Code(transport.ToStatus(err)); c != codes.FailedPrecondition {
			t.Fatalf("join of a foreign node: code %v", c)
		}
		// Its data dir, restarted with --join to this cluster: refused at start.
		other.nodes[0].Close()
		other.nodes[0] = nil
		cfg := testConfig(t, "n1", other.dirs[0], listen(t), nil, 2)
		cfg.Join = tc.addrs()
		expectRefused(t, cfg, "belongs to cluster "+otherID)
	})
	after := tc.nodes[0].meta.raft.GetConfiguration().Configuration().Servers
	if len(after) != len(before) {
		t.Fatalf("the running cluster changed: %v -> %v", before, after)
	}
	for _, s := range tc.nodes[0].shards {
		if n := len(s.raft.GetConfiguration().Configuration().Servers); n != 3 {
			t.Fatalf("shard %d has %d servers", s.id, n)
		}
	}
}
