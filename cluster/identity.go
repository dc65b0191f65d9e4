package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/fsm"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// A node's identity and the cluster it belongs to are checked at start,
// before it opens a Raft group, so that a wrong deployment fails loudly on
// the node that is wrong and leaves the running cluster untouched:
//
//   - DATA/cluster.json records the node id the data dir was made for and,
//     once the meta group has recorded one, the cluster id. A data dir of
//     another node, or of another cluster (a --join or --peers address that
//     answers with a different cluster id), is refused.
//   - Bootstrap peers that answer are compared with the peer list: a peer
//     listed as n2 that says it is n3 (a wrong list, or two nodes given the
//     same id), or a first start whose peers were bootstrapped with a
//     different list, is refused.
//   - A --join address that answers but is not a voter of its own cluster is
//     refused: joining through it could never succeed.
//
// Peers that do not answer within Config.IdentityProbeTimeout are not judged (they
// may not have started yet): the checks act only on positive evidence.
//
// The cluster id itself is random, proposed once by the first meta leader
// whose voters all understand meta version 2 (recordClusterID), and kept in
// the meta group's replicated state; every node copies it into its cluster
// file when it learns it (keepClusterFile).

// clusterFile records facts of the cluster a node must know before it can
// open its Raft groups.
type clusterFile struct {
	Format    int    `json:"format"`
	Shards    int    `json:"shards"`
	NodeID    string `json:"node_id,omitempty"`    // the node the data dir was made for
	ClusterID string `json:"cluster_id,omitempty"` // set once the node has learned it
}

const clusterFileName = "cluster.json"

// loadClusterFile reads DATA/cluster.json, or creates it on a first start:
// the shard count is the bootstrap setting, or what the cluster being
// joined has. fresh says whether it was created now.
func loadClusterFile(cfg Config, probe probeFunc) (cf clusterFile, fresh bool, err error) {
	path := filepath.Join(cfg.DataDir, clusterFileName)
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &cf); err != nil || cf.Shards < 1 {
			return cf, false, fmt.Errorf("%s is corrupt: %v", path, err)
		}
		if cf.NodeID != "" && cf.NodeID != cfg.NodeID {
			return cf, false, fmt.Errorf("data dir %s belongs to node %q, not %q: give every node its own data dir (or the node id it was made with)", cfg.DataDir, cf.NodeID, cfg.NodeID)
		}
		if cf.NodeID == "" { // written before node ids were recorded
			cf.NodeID = cfg.NodeID
			return cf, false, writeClusterFile(cfg.DataDir, cf)
		}
		return cf, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return cf, false, err
	}
	n := cfg.Shards
	if len(cfg.Bootstrap) == 0 && len(cfg.Join) > 0 {
		if n, err = discoverShardCount(cfg, probe); err != nil {
			return cf, false, err
		}
	}
	cf = clusterFile{Format: 1, Shards: n, NodeID: cfg.NodeID}
	return cf, true, writeClusterFile(cfg.DataDir, cf)
}

func writeClusterFile(dir string, cf clusterFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, clusterFileName)
	b, _ := json.Marshal(cf)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkIdentity runs the start-time checks above. advertise is the address
// this node gives to others; probeStatus asks a peer for its status (with
// the node's credentials).
func checkIdentity(cfg Config, cf clusterFile, fresh bool, advertise string, probeStatus probeFunc) error {
	if len(cfg.Bootstrap) > 0 && cfg.Advertise != "" {
		for _, p := range cfg.Bootstrap {
			if p.ID == cfg.NodeID && p.Addr != advertise {
				return fmt.Errorf("--peers lists this node %q at %s, but it advertises %s: is the peer list wrong, or do two nodes have id %q?", p.ID, p.Addr, advertise, p.ID)
			}
		}
	}
	type probe struct {
		addr, id string // id: the id the peer list gives the address ("" for --join)
		st       *hodeiv1.StatusResponse
	}
	if cfg.IdentityProbeTimeout == 0 {
		return nil
	}
	var probes []*probe
	for _, p := range cfg.Bootstrap {
		if p.ID != cfg.NodeID {
			probes = append(probes, &probe{addr: p.Addr, id: p.ID})
		}
	}
	for _, a := range cfg.Join {
		if a != advertise {
			probes = append(probes, &probe{addr: a})
		}
	}
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), cfg.IdentityProbeTimeout)
			defer cancel()
			p.st, _ = probeStatus(ctx, p.addr)
		}()
	}
	wg.Wait()
	want := peerSet(cfg.Bootstrap)
	for _, p := range probes {
		if p.st == nil {
			continue // not up (yet): nothing to judge
		}
		got := p.st.GetNodeId()
		if p.id != "" && got != p.id {
			if got == cfg.NodeID {
				return fmt.Errorf("two nodes have id %q: this one and the one at %s (--peers lists %s as %q)", got, p.addr, p.addr, p.id)
			}
			return fmt.Errorf("--peers lists %q at %s, but the node there is %q: fix the peer list", p.id, p.addr, got)
		}
		if cf.ClusterID != "" && p.st.GetClusterId() != "" && p.st.GetClusterId() != cf.ClusterID {
			return fmt.Errorf("data dir %s belongs to cluster %s, but the node %q at %s is in cluster %s: this node was started with another cluster's data dir (or the wrong addresses)", cfg.DataDir, cf.ClusterID, got, p.addr, p.st.GetClusterId())
		}
		if p.id == "" && !isMetaVoter(p.st) {
			return fmt.Errorf("--join %s: the node there (%q) is not a member of a cluster (not a voter of its meta group): join through a running member", p.addr, got)
		}
		if p.id != "" && fresh {
			if have := statusPeerSet(p.st); have != "" && have != want {
				return fmt.Errorf("--peers is {%s}, but %q at %s was bootstrapped with {%s}: every bootstrap node needs the same peer list (and a node joining a running cluster uses --join)", want, got, p.addr, have)
			}
		}
	}
	return nil
}

func isMetaVoter(st *hodeiv1.StatusResponse) bool {
	for _, s := range st.GetMetaServers() {
		if s.GetId() == st.GetNodeId() && s.GetSuffrage() == raft.Voter.String() {
			return true
		}
	}
	return false
}

// peerSet is "id=addr,..." sorted, the form both sides of a comparison use.
func peerSet(peers []Peer) string {
	out := make([]string, len(peers))
	for i, p := range peers {
		out[i] = p.ID + "=" + p.Addr
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func statusPeerSet(st *hodeiv1.StatusResponse) string {
	var peers []Peer
	for _, s := range st.GetMetaServers() {
		peers = append(peers, Peer{ID: s.GetId(), Addr: s.GetAddress()})
	}
	return peerSet(peers)
}

// ClusterID is the cluster this node belongs to: the meta group's record,
// else what the node's data dir says ("" before either knows).
func (n *Node) ClusterID() string {
	if id := n.meta.fsm.ClusterID(); id != "" {
		return id
	}
	return n.clusterFile.ClusterID
}

// recordClusterID runs on the meta leader while the meta group has no
// cluster id: once every voter understands meta version 2 (so that no
// older node meets a command it cannot apply during a rolling upgrade), it
// proposes a random one. First writer wins in the FSM.
func (m *metaGroup) recordClusterID(ctx context.Context) {
	cf := m.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage != raft.Voter || string(srv.ID) == m.n.cfg.NodeID {
			continue
		}
		st, err := m.n.probe(ctx, string(srv.Address))
		if err != nil || st.GetMetaVersion() < 2 {
			return // not now: try again next round
		}
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return
	}
	id := hex.EncodeToString(b[:])
	if err := m.propose(&internalpb.MetaCommand{Kind: &internalpb.MetaCommand_InitClusterId{InitClusterId: id}}); err != nil {
		m.n.cfg.Logger.Warn("meta: record cluster id", "err", err)
		return
	}
	m.n.cfg.Logger.Info("cluster id recorded", "cluster_id", m.fsm.ClusterID())
}

// keepClusterFile copies the meta group's cluster id into this node's
// cluster file once it is known, so that the start-time checks can use it.
func (m *metaGroup) keepClusterFile() {
	defer m.wg.Done()
	for {
		wait := m.changed.Wait()
		if id := m.fsm.ClusterID(); id != "" {
			cf := m.n.clusterFile
			if cf.ClusterID == id {
				return
			}
			cf.ClusterID = id
			if err := writeClusterFile(m.n.cfg.DataDir, cf); err != nil {
				m.n.cfg.Logger.Error("cannot record the cluster id in the data dir", "err", err)
			}
			return
		}
		select {
		case <-m.stop:
			return
		case <-wait:
		}
	}
}

// checkJoiner refuses to add a node whose data dir belongs to another cluster.
func checkJoiner(ours string, st *hodeiv1.StatusResponse, addr string) error {
	if theirs := st.GetClusterId(); theirs != "" && ours != "" && theirs != ours {
		return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: fmt.Sprintf(
			"the node %q at %s belongs to cluster %s, this is cluster %s: start it with an empty data dir to join", st.GetNodeId(), addr, theirs, ours)}
	}
	return nil
}
